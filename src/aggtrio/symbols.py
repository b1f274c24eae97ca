"""Trading-pair names: one canonical spelling inside the service, the venue's spelling at the edge.

Users may write a pair as ``ETHBTC``, ``ethbtc``, ``ETH/BTC`` or ``ETH-BTC``; all mean the
canonical ``ETHBTC``. Each venue adapter maps the canonical name to its own spelling.
"""

from __future__ import annotations

import re

MAX_SYMBOL_LENGTH = 32
_SYMBOL = re.compile(r"^[A-Za-z0-9]+(?:[/_-][A-Za-z0-9]+)?$")


class InvalidSymbolError(ValueError):
    """A symbol that cannot name a trading pair (empty, too long, stray characters)."""


def normalize_symbol(text: str) -> str:
    """Return the canonical form of a pair name (``"eth/btc"`` -> ``"ETHBTC"``)."""
    stripped = text.strip()
    if not stripped:
        raise InvalidSymbolError("symbol is empty")
    if len(stripped) > MAX_SYMBOL_LENGTH:
        raise InvalidSymbolError(
            f"symbol {stripped[:MAX_SYMBOL_LENGTH]!r}... is longer than "
            f"{MAX_SYMBOL_LENGTH} characters"
        )
    if not _SYMBOL.match(stripped):
        raise InvalidSymbolError(
            f"symbol {stripped!r} is not a pair name like ETHBTC, ETH/BTC or ETH-BTC"
        )
    canonical = re.sub(r"[/_-]", "", stripped).upper()
    if len(canonical) < 2:
        raise InvalidSymbolError(f"symbol {stripped!r} is too short to name a pair")
    return canonical


def parse_symbol_list(text: str) -> tuple[str, ...]:
    """Parse ``"ETHBTC,btc-usdt"`` into canonical symbols, keeping order and dropping repeats."""
    symbols: list[str] = []
    for part in text.split(","):
        symbol = normalize_symbol(part)
        if symbol not in symbols:
            symbols.append(symbol)
    return tuple(symbols)
