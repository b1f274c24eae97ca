from __future__ import annotations

import pytest

from .wire import Wire


@pytest.fixture(params=[True, False], ids=["bytes", "str"])
def wire(request: pytest.FixtureRequest) -> Wire:
    """Each adapter test runs once with bytes and once with text messages."""
    return Wire(request.param)
