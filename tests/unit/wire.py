"""Venue messages as they arrive from a socket: trio-websocket yields text or bytes."""

from __future__ import annotations

import json
from typing import Any


class Wire:
    """Serialises a JSON value the way it arrives from the socket: as bytes or as text."""

    def __init__(self, as_bytes: bool) -> None:
        self.as_bytes = as_bytes

    def __call__(self, value: Any) -> str | bytes:
        return self.text(json.dumps(value))

    def text(self, text: str) -> str | bytes:
        return text.encode() if self.as_bytes else text
