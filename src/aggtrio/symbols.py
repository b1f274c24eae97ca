"""Trading-pair names: one canonical spelling inside the service, the venue's spelling at the edge.

Users may write a pair as ``ETHBTC``, ``ethbtc``, ``ETH/BTC`` or ``ETH-BTC``; all mean the
canonical ``ETHBTC``. :func:`venue_pair` is the one place that spells a pair the way each
venue does (``ethbtc``, ``ETH/BTC``, ``ETH-BTC``, ``ETHBTC``).
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


# Quote assets the venues list pairs against, tried longest first so BTCUSDT is BTC/USDT,
# not BTCU/SDT... or BTCUSD/T. Venues that separate base and quote (Kraken, Coinbase, OKX)
# need this split; a canonical symbol keeps no separator.
QUOTE_ASSETS = tuple(
    sorted(
        (
            "BTC", "ETH", "USDT", "USDC", "USD", "EUR", "GBP", "JPY", "AUD", "CAD", "CHF",
            "DAI", "FDUSD", "TUSD", "PYUSD", "EURC", "TRY", "BRL", "BNB", "SOL", "XRP",
        ),
        key=len,
        reverse=True,
    )
)  # fmt: skip


class UnknownPairError(InvalidSymbolError):
    """A venue cannot spell this pair (its base and quote cannot be told apart offline)."""


def split_pair(symbol: str) -> tuple[str, str]:
    """``"ETHBTC"`` -> ``("ETH", "BTC")``, by the longest known quote asset it ends with."""
    canonical = normalize_symbol(symbol)
    for quote in QUOTE_ASSETS:
        if canonical.endswith(quote) and len(canonical) - len(quote) >= 2:
            return canonical[: -len(quote)], quote
    raise UnknownPairError(
        f"cannot tell base from quote in {canonical!r}: it ends in none of the known quote "
        f"assets ({', '.join(sorted(QUOTE_ASSETS))})"
    )


def _lower(symbol: str) -> str:
    return symbol.lower()


def _upper(symbol: str) -> str:
    return symbol


def _slash(symbol: str) -> str:
    return "/".join(split_pair(symbol))


def _dash(symbol: str) -> str:
    return "-".join(split_pair(symbol))


# How each venue writes a pair in its subscriptions and messages (VENUES.md, "Symbols").
_VENUE_SPELLING = {
    "binance": _lower,  # stream names: ethbtc@depth20@100ms
    "bitstamp": _lower,  # channels: order_book_ethbtc
    "kraken": _slash,  # ETH/BTC
    "coinbase": _dash,  # ETH-BTC
    "okx": _dash,  # ETH-BTC
    "bybit": _upper,  # ETHBTC
}


def venue_pair(venue: str, symbol: str) -> str:
    """`symbol` (any accepted spelling) as `venue` writes it; UnknownPairError if it cannot."""
    try:
        spell = _VENUE_SPELLING[venue]
    except KeyError:
        raise ValueError(f"no pair spelling known for venue {venue!r}") from None
    try:
        return spell(normalize_symbol(symbol))
    except UnknownPairError as exc:
        raise UnknownPairError(f"{venue}: {exc}") from None


def parse_venue_pair(venue: str, pair: object) -> str | None:
    """The canonical symbol of `pair` if it is spelled exactly as `venue` spells it (see
    :func:`venue_pair`), else None."""
    if not isinstance(pair, str):
        return None
    try:
        symbol = normalize_symbol(pair)
        return symbol if venue_pair(venue, symbol) == pair else None
    except InvalidSymbolError:
        return None
