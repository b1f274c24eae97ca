"""Whatever a venue (or a broken proxy) sends, an adapter returns events or MalformedMessageError.

Any other exception would escape the feed's error handling, and any book that passes must be
one the merge can trust: two-sided, finite positive numbers, strictly ordered best-first, not
crossed, at most `depth` levels. Only snapshot-then-delta venues may emit Resync, and only for
a symbol they carry.

Arbitrary bytes, text and JSON go to every registered adapter. Real envelopes with arbitrary
contents are fuzzed here for the whole-book venues, where one message is a whole book; a delta
venue's message means something only after its snapshot, so its envelopes are fuzzed as
sequences on one connection in the venue's own file (test_<venue>*fuzz.py).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from aggtrio.model import VenueBook
from aggtrio.simulator import SIMULATORS
from aggtrio.simulator.delta import DeltaVenue
from aggtrio.venues import ADAPTERS as REGISTERED
from aggtrio.venues.base import (
    MalformedMessageError,
    ReconnectRequested,
    Resync,
    Subscribed,
    VenueAdapter,
    VenueError,
)
from aggtrio.venues.binance import BinanceAdapter
from aggtrio.venues.bitstamp import BitstampAdapter

EVENT_TYPES = (VenueBook, ReconnectRequested, Subscribed, VenueError)
SYMBOLS = ("ETHBTC", "BTCUSDT")
ADAPTERS = list(REGISTERED.values())
# Snapshot-then-delta venues (their simulators say so): the only ones that may resync.
DELTA_VENUES = frozenset(
    name
    for name, simulator in SIMULATORS.items()
    if isinstance(simulator, type) and issubclass(simulator, DeltaVenue)
)

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,  # no .hypothesis directory in the project tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# --- strategies -------------------------------------------------------------------------------

# orjson can only write UTF-8 text (no lone surrogates) and 64-bit integers.
json_text = st.text(st.characters(codec="utf-8"), max_size=12)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    json_text,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(json_text, children, max_size=4),
    ),
    max_leaves=8,
)


# Values of the wrong type for a key are a classic crash: give lists and objects a fair share.
json_containers = st.one_of(
    st.lists(json_scalars, max_size=2), st.dictionaries(json_text, json_scalars, max_size=2)
)


def mostly(usual: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`usual` three times in four, else `rare`: keeps well-formed messages common enough."""

    @st.composite
    def pick(draw: st.DrawFn) -> Any:
        return draw(rare) if draw(st.integers(0, 3)) == 3 else draw(usual)

    return pick()


# Numbers as venues spell them, and the spellings that must not get through.
number_text = st.one_of(
    st.floats(min_value=1e-9, max_value=1e7).map(lambda x: f"{x:.8f}"),
    st.floats().map(repr),
    st.integers(min_value=-5, max_value=5).map(str),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-0", "0.0", "", " 1 "]),
    json_text,
)
junk_level = st.one_of(
    st.lists(number_text, max_size=3),
    st.lists(st.one_of(number_text, json_values), max_size=3),
    json_values,
)


@st.composite
def plausible_side(draw: st.DrawFn, descending: bool, low: float, high: float) -> list[Any]:
    """A well-formed side, sometimes spoiled by one out-of-order, duplicate or junk level."""
    prices = draw(st.lists(st.floats(min_value=low, max_value=high), max_size=14, unique=True))
    prices.sort(reverse=descending)
    amounts = draw(
        st.lists(
            st.floats(min_value=1e-8, max_value=1e6), min_size=len(prices), max_size=len(prices)
        )
    )
    side: list[Any] = [[f"{p!r}", f"{a!r}"] for p, a in zip(prices, amounts, strict=True)]
    spoil = draw(st.sampled_from(["none", "swap", "duplicate", "junk"]))
    if not side or draw(st.integers(0, 3)) != 3:
        return side
    if spoil == "swap":
        i = draw(st.integers(0, len(side) - 1))
        j = draw(st.integers(0, len(side) - 1))
        side[i], side[j] = side[j], side[i]
    elif spoil == "duplicate":
        i = draw(st.integers(0, len(side) - 1))
        side.insert(i, list(side[i]))
    elif spoil == "junk":
        side.insert(draw(st.integers(0, len(side))), draw(junk_level))
    return side


def book_side(descending: bool) -> st.SearchStrategy[Any]:
    # Bids mostly below 100 and asks mostly above, with overlap so crossed books happen too.
    low, high = (1e-6, 101.0) if descending else (99.0, 1e6)
    return mostly(
        plausible_side(descending, low, high),
        st.one_of(st.lists(junk_level, max_size=6), json_values),
    )


bids = book_side(descending=True)
asks = book_side(descending=False)


def with_extras(base: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Real envelopes, sometimes with a key dropped or an unexpected key added."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        envelope = dict(draw(base))
        if envelope and draw(st.integers(0, 3)) == 3:
            del envelope[draw(st.sampled_from(sorted(envelope)))]
        if draw(st.integers(0, 3)) == 3:
            envelope[draw(json_text)] = draw(json_values)
        return envelope

    return build()


binance_streams = mostly(
    st.sampled_from(["ethbtc@depth20@100ms", "btcusdt@depth20@100ms"]),
    st.one_of(
        st.sampled_from(["ltcbtc@depth20@100ms", "!serverShutdown"]), json_scalars, json_containers
    ),
)
binance_depth = st.fixed_dictionaries(
    {"lastUpdateId": st.integers(0, 2**63), "bids": bids, "asks": asks}
)
binance_envelopes = mostly(
    with_extras(
        st.fixed_dictionaries(
            {"stream": binance_streams, "data": mostly(binance_depth, json_values)}
        )
    ),
    st.one_of(
        with_extras(st.fixed_dictionaries({"result": json_values, "id": json_values})),
        with_extras(st.fixed_dictionaries({"error": json_values, "id": json_values})),
        with_extras(
            st.fixed_dictionaries(
                {"e": st.one_of(st.just("serverShutdown"), json_values), "E": json_values}
            )
        ),
    ),
)

BITSTAMP_CONTROL_EVENTS = [
    "bts:heartbeat",
    "bts:subscription_succeeded",
    "bts:unsubscription_succeeded",
    "bts:request_reconnect",
    "bts:error",
    "bts:subscribe",
]
bitstamp_channels = st.one_of(
    st.sampled_from(["order_book_ethbtc", "order_book_btcusdt"]),
    st.sampled_from(["order_book_ltcbtc", "diff_order_book_ethbtc", ""]),
    json_scalars,
    json_containers,
)
bitstamp_data = st.fixed_dictionaries(
    {
        "timestamp": st.integers(0, 2**40).map(str),
        "microtimestamp": st.integers(0, 2**60).map(str),
        "bids": bids,
        "asks": asks,
    }
)
bitstamp_envelopes = st.one_of(
    # Book data, mostly for a channel we subscribed.
    with_extras(
        st.fixed_dictionaries(
            {
                "event": mostly(st.just("data"), json_values),
                "channel": mostly(
                    st.sampled_from(["order_book_ethbtc", "order_book_btcusdt"]), bitstamp_channels
                ),
                "data": mostly(bitstamp_data, json_values),
            }
        )
    ),
    # Control events, with anything at all in channel and data.
    with_extras(
        st.fixed_dictionaries(
            {
                "event": mostly(st.sampled_from(BITSTAMP_CONTROL_EVENTS), json_values),
                "channel": bitstamp_channels,
                "data": st.one_of(json_values, bitstamp_data),
            }
        )
    ),
)

ENVELOPES: dict[type[VenueAdapter], st.SearchStrategy[dict[str, Any]]] = {
    BinanceAdapter: binance_envelopes,
    BitstampAdapter: bitstamp_envelopes,
}


def wire(value: Any, as_bytes: bool) -> str | bytes:
    data = orjson.dumps(value)
    return data if as_bytes else data.decode()


# --- the property -----------------------------------------------------------------------------


def check(adapter: VenueAdapter, message: str | bytes, recv_ns: int) -> None:
    try:
        events = adapter.handle_message(message, recv_ns)
    except MalformedMessageError:
        return
    assert isinstance(events, list)
    allowed = (*EVENT_TYPES, Resync) if adapter.name in DELTA_VENUES else EVENT_TYPES
    for event in events:
        assert isinstance(event, allowed)
        if isinstance(event, Subscribed | Resync):
            assert event.symbol in adapter.symbols
        if isinstance(event, VenueBook):
            check_book(adapter, event, recv_ns)


def check_book(adapter: VenueAdapter, book: VenueBook, recv_ns: int) -> None:
    assert book.venue == adapter.name
    assert book.symbol in adapter.symbols
    assert book.recv_ns == recv_ns
    assert book.bids, "an empty side is a broken message, never a book"
    assert book.asks, "an empty side is a broken message, never a book"
    for side in (book.bids, book.asks):
        assert isinstance(side, tuple)
        assert len(side) <= adapter.depth
        for price, amount in side:
            assert type(price) is float
            assert type(amount) is float
            assert math.isfinite(price)
            assert price > 0
            assert math.isfinite(amount)
            assert amount > 0
    bid_prices = [price for price, _ in book.bids]
    ask_prices = [price for price, _ in book.asks]
    assert all(a > b for a, b in itertools.pairwise(bid_prices))
    assert all(a < b for a, b in itertools.pairwise(ask_prices))
    assert bid_prices[0] < ask_prices[0]


depths = st.integers(min_value=1, max_value=12)


@pytest.mark.parametrize("adapter_type", ADAPTERS, ids=lambda t: t.name)
@FUZZ
@given(message=st.binary(max_size=200), depth=depths)
def test_arbitrary_bytes(adapter_type: type[VenueAdapter], message: bytes, depth: int) -> None:
    check(adapter_type(SYMBOLS, depth), message, 1)


@pytest.mark.parametrize("adapter_type", ADAPTERS, ids=lambda t: t.name)
@FUZZ
@given(
    # Including lone surrogates, which a str from a WebSocket library cannot carry but a
    # caller could still pass.
    message=st.text(st.characters(exclude_categories=()), max_size=200),
    depth=depths,
)
def test_arbitrary_text(adapter_type: type[VenueAdapter], message: str, depth: int) -> None:
    check(adapter_type(SYMBOLS, depth), message, 1)


@pytest.mark.parametrize("adapter_type", ADAPTERS, ids=lambda t: t.name)
@FUZZ
@given(value=json_values, as_bytes=st.booleans(), depth=depths)
def test_arbitrary_json(
    adapter_type: type[VenueAdapter], value: Any, as_bytes: bool, depth: int
) -> None:
    check(adapter_type(SYMBOLS, depth), wire(value, as_bytes), 1)


# Whole-book venues only: see the module docstring for the delta venues.
@pytest.mark.parametrize("adapter_type", list(ENVELOPES), ids=lambda t: t.name)
@FUZZ
@given(data=st.data(), as_bytes=st.booleans(), depth=depths, recv_ns=st.integers(0, 2**63 - 1))
def test_envelopes_with_arbitrary_contents(
    adapter_type: type[VenueAdapter],
    data: st.DataObject,
    as_bytes: bool,
    depth: int,
    recv_ns: int,
) -> None:
    message = data.draw(ENVELOPES[adapter_type])
    adapter = adapter_type(SYMBOLS, depth)
    # Again (a repeat may be suppressed, never broken), and again on a fresh connection.
    for _ in range(2):
        check(adapter, wire(message, as_bytes), recv_ns)
    check(adapter.for_new_connection(), wire(message, as_bytes), recv_ns)


def _gives_a_book(adapter_type: type[VenueAdapter], message: dict[str, Any]) -> bool:
    try:
        events = adapter_type(SYMBOLS, 10).handle_message(orjson.dumps(message), 1)
    except MalformedMessageError:
        return False
    return any(isinstance(event, VenueBook) and event.bids and event.asks for event in events)


@pytest.mark.parametrize("adapter_type", list(ENVELOPES), ids=lambda t: t.name)
def test_the_envelope_strategy_reaches_real_books(adapter_type: type[VenueAdapter]) -> None:
    """Guard against a fuzz that only ever exercises the rejection paths."""
    # find() raises NoSuchExample if no generated envelope gives a two-sided book.
    find(
        ENVELOPES[adapter_type],
        lambda message: _gives_a_book(adapter_type, message),
        # Only a few percent of envelopes make a two-sided book: allow plenty of tries.
        settings=settings(max_examples=2000, database=None, phases=[Phase.generate]),
    )


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_every_venue_has_its_envelopes_fuzzed(name: str) -> None:
    """A venue added later must not escape the envelope fuzz: whole-book venues get a
    strategy here, delta venues a sequence fuzz of their own."""
    if name in DELTA_VENUES:
        assert sorted(Path(__file__).parent.glob(f"test_{name}*fuzz.py")), name
    else:
        assert REGISTERED[name] in ENVELOPES, name


@pytest.mark.parametrize("channel", [[], {}, ["order_book_ethbtc"]], ids=["list", "dict", "list1"])
def test_bitstamp_unhashable_channel(channel: Any) -> None:
    message = {"event": "bts:subscription_succeeded", "channel": channel, "data": {}}
    adapter = BitstampAdapter(SYMBOLS, 10)
    # An ack for a channel we never asked for may be ignored or refused, but not crash.
    with contextlib.suppress(MalformedMessageError):
        assert adapter.handle_message(orjson.dumps(message), 1) == []
