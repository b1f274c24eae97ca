"""Whatever arrives on a Coinbase connection, the adapter returns events or raises
MalformedMessageError, and every book it publishes is one the merge can trust.

The same property as tests/unit/test_adapter_fuzz.py (which also feeds every adapter
arbitrary bytes, text and JSON), for a delta venue's own envelopes: messages arrive in
sequences (snapshots, then updates, acks and heartbeats, sometimes out of order), since its
state is what can go wrong.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from aggtrio.model import VenueBook
from aggtrio.venues.base import (
    MalformedMessageError,
    Resync,
    Subscribed,
    VenueError,
)
from aggtrio.venues.coinbase import CoinbaseAdapter

from .test_adapter_fuzz import FUZZ, check_book, json_scalars, json_values, mostly, number_text

SYMBOLS = ("ETHBTC", "BTCUSDT")
EVENT_TYPES = (VenueBook, Subscribed, VenueError, Resync)

products = mostly(
    st.sampled_from(["ETH-BTC", "BTC-USDT"]),
    st.one_of(st.sampled_from(["LTC-BTC", "ETHBTC", ""]), json_values),
)
# Prices near each other on both sides, so updates often reach (and sometimes cross) the top.
prices = mostly(st.integers(95, 105).map(str), number_text)
sizes = mostly(st.sampled_from(["0", "1", "2.5", "0.00000001"]), number_text)
level_updates = mostly(
    st.fixed_dictionaries(
        {
            "side": mostly(st.sampled_from(["bid", "offer"]), json_scalars),
            "event_time": st.just("2023-02-09T20:32:50.714964855Z"),
            "price_level": prices,
            "new_quantity": sizes,
        }
    ),
    json_values,
)


@st.composite
def snapshot_updates(draw: st.DrawFn) -> list[Any]:
    """A plausible whole book: bids below 100, offers above, sometimes spoiled."""
    bids = draw(st.lists(st.integers(80, 99), max_size=20, unique=True))
    asks = draw(st.lists(st.integers(101, 120), max_size=20, unique=True))
    updates: list[Any] = [
        {"side": "bid", "event_time": "t", "price_level": str(p), "new_quantity": "1"} for p in bids
    ] + [
        {"side": "offer", "event_time": "t", "price_level": str(p), "new_quantity": "2"}
        for p in asks
    ]
    if draw(st.integers(0, 3)) == 3:
        updates.insert(draw(st.integers(0, len(updates))), draw(level_updates))
    return updates


l2_events = st.fixed_dictionaries(
    {
        "type": mostly(st.sampled_from(["snapshot", "update"]), json_scalars),
        "product_id": products,
        "updates": mostly(
            st.one_of(snapshot_updates(), st.lists(level_updates, max_size=6)), json_values
        ),
    }
)


@st.composite
def messages(draw: st.DrawFn, sequence: list[int]) -> Any:
    """One message of a connection; its sequence_num mostly the next one."""
    number: Any = sequence[0]
    if draw(st.integers(0, 9)) == 9:
        number = draw(st.one_of(st.integers(-2, number + 3), json_scalars))
    else:
        sequence[0] += 1
    kind = draw(st.integers(0, 9))
    base: dict[str, Any] = {"client_id": "", "timestamp": "t", "sequence_num": number}
    if kind < 6:
        events = draw(mostly(st.lists(l2_events, min_size=1, max_size=3), json_values))
        return base | {"channel": "l2_data", "events": events}
    if kind < 8:
        counter = draw(st.one_of(st.integers(0, 5), st.integers(0, 5).map(str), json_scalars))
        return base | {
            "channel": "heartbeats",
            "events": [{"current_time": "t", "heartbeat_counter": counter}],
        }
    if kind == 8:
        listed = draw(st.lists(products, max_size=3))
        return base | {
            "channel": "subscriptions",
            "events": [{"subscriptions": {"level2": listed}}],
        }
    return draw(
        st.one_of(
            st.fixed_dictionaries({"type": st.just("error"), "message": json_values}),
            st.dictionaries(st.text(max_size=12), json_values, max_size=4),
        )
    )


@st.composite
def connections(draw: st.DrawFn) -> list[bytes]:
    sequence = [draw(st.integers(0, 3))]
    return [orjson.dumps(draw(messages(sequence))) for _ in range(draw(st.integers(1, 8)))]


def check(adapter: CoinbaseAdapter, message: bytes, recv_ns: int) -> list[Any]:
    try:
        events = adapter.handle_message(message, recv_ns)
    except MalformedMessageError:
        return []
    assert isinstance(events, list)
    for event in events:
        assert isinstance(event, EVENT_TYPES)
        if isinstance(event, Subscribed | Resync):
            assert event.symbol in adapter.symbols
        if isinstance(event, VenueBook):
            check_book(adapter, event, recv_ns)
    return events


@settings(FUZZ, max_examples=200)
@given(connection=connections(), depth=st.integers(1, 12))
def test_any_message_sequence_gives_events_or_malformed(
    connection: list[bytes], depth: int
) -> None:
    adapter = CoinbaseAdapter(SYMBOLS, depth)
    for recv_ns, message in enumerate(connection, start=1):
        check(adapter, message, recv_ns)


def _reaches_a_book(connection: list[bytes]) -> bool:
    adapter = CoinbaseAdapter(SYMBOLS, 10)
    found = False
    for message in connection:
        try:
            events = adapter.handle_message(message, 1)
        except MalformedMessageError:
            continue
        found = found or any(isinstance(e, VenueBook) for e in events)
    return found


def test_the_connection_strategy_reaches_real_books() -> None:
    """Guard against a fuzz that only ever exercises the rejection paths."""
    find(
        connections(),
        _reaches_a_book,
        settings=settings(max_examples=2000, database=None, phases=[Phase.generate]),
    )
