"""Fuzzing the Bybit adapter (arbitrary bytes, text and JSON: test_adapter_fuzz.py): any
sequence of Bybit envelopes yields events or MalformedMessageError, and any stream of
well-formed snapshots and deltas, continuous or not, yields exactly the book (and the
resyncs) that a plain reference model of Bybit's rules says it should."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from aggtrio.model import VenueBook
from aggtrio.venues.base import MalformedMessageError, Resync, Subscribed, VenueError
from aggtrio.venues.bybit import BybitAdapter

from .test_adapter_fuzz import (
    FUZZ,
    SYMBOLS,
    asks,
    bids,
    check_book,
    depths,
    json_containers,
    json_scalars,
    json_values,
    mostly,
    wire,
    with_extras,
)

EVENT_TYPES = (VenueBook, Resync, Subscribed, VenueError)


def check(adapter: BybitAdapter, message: str | bytes, recv_ns: int) -> None:
    try:
        events = adapter.handle_message(message, recv_ns)
    except MalformedMessageError:
        return
    assert isinstance(events, list)
    for event in events:
        assert isinstance(event, EVENT_TYPES)
        if isinstance(event, Subscribed | Resync):
            assert event.symbol in adapter.symbols
        if isinstance(event, VenueBook):
            check_book(adapter, event, recv_ns)


topics = mostly(
    st.sampled_from(["orderbook.50.ETHBTC", "orderbook.50.BTCUSDT"]),
    st.one_of(st.sampled_from(["orderbook.200.ETHBTC", "orderbook.50.LTCBTC", ""]), json_scalars),
)
update_ids = mostly(st.integers(1, 12), st.one_of(st.integers(-5, 2**64 - 1), json_values))
book_data = st.fixed_dictionaries(
    {"s": mostly(st.sampled_from(SYMBOLS), json_values), "b": bids, "a": asks, "u": update_ids}
)
data_messages = with_extras(
    st.fixed_dictionaries(
        {
            "topic": topics,
            "type": mostly(st.sampled_from(["snapshot", "delta"]), json_values),
            "ts": st.integers(0, 2**60),
            "data": mostly(book_data, json_values),
        }
    )
)
replies = with_extras(
    st.fixed_dictionaries(
        {
            "success": mostly(st.booleans(), json_values),
            "ret_msg": st.one_of(st.sampled_from(["pong", "subscribe", ""]), json_values),
            "conn_id": json_values,
            "req_id": mostly(st.sampled_from(["1", "2", "ping"]), json_values),
            "op": mostly(
                st.sampled_from(["ping", "pong", "subscribe", "unsubscribe"]), json_values
            ),
        }
    )
)


@FUZZ
@given(
    messages=st.lists(st.one_of(data_messages, replies, json_containers), min_size=1, max_size=6),
    as_bytes=st.booleans(),
    depth=depths,
)
def test_envelopes_with_arbitrary_contents(messages: list[Any], as_bytes: bool, depth: int) -> None:
    adapter = BybitAdapter(SYMBOLS, depth)
    adapter.subscribe_messages()  # so acks with req_id "1" are attributable
    for recv_ns, message in enumerate(messages, 1):
        check(adapter, wire(message, as_bytes), recv_ns)


# --- the model --------------------------------------------------------------------------------

# Bids and asks on separate price bands, so a well-formed stream never crosses itself.
BID_PRICES = [f"0.0{n:03d}" for n in range(100, 120)]
ASK_PRICES = [f"0.0{n:03d}" for n in range(121, 141)]
amounts = st.sampled_from(["0.5", "1", "2.25", "7"])


class Model:
    """Bybit's rules, written as plainly as possible."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.book: dict[str, dict[float, float]] | None = None
        self.last_u = 0
        self.published: tuple[Any, Any] | None = None

    def top(self) -> tuple[tuple[tuple[float, float], ...], tuple[tuple[float, float], ...]]:
        assert self.book is not None
        bid_side = sorted(self.book["b"].items(), reverse=True)[: self.depth]
        ask_side = sorted(self.book["a"].items())[: self.depth]
        return tuple(bid_side), tuple(ask_side)

    def expect(self, kind: str, levels: dict[str, list[list[str]]], u: int) -> list[str]:
        """Apply one message; the kinds of event it should produce."""
        if kind == "snapshot":
            self.book = {side: {float(p): float(a) for p, a in levels[side]} for side in "ba"}
            self.last_u = u
            self.published = None
        elif self.book is None:
            return []
        elif u != self.last_u + 1:
            self.book = None
            return ["resync"]
        else:
            for side in "ba":
                for price, amount in levels[side]:
                    if float(amount):
                        self.book[side][float(price)] = float(amount)
                    else:
                        self.book[side].pop(float(price), None)
            self.last_u = u
        top = self.top()
        if top == self.published:
            return []
        if not top[0] or not top[1]:
            self.book = None
            return ["resync"]
        self.published = top
        return ["book"]


def side(prices: list[str], *, snapshot: bool) -> st.SearchStrategy[list[list[str]]]:
    """Levels at distinct prices: best-first and all present in a snapshot; in a delta any
    order, amount "0" deleting."""
    chosen = st.lists(st.sampled_from(prices), unique=True, min_size=snapshot, max_size=8)
    if snapshot:
        descending = prices is BID_PRICES
        return chosen.flatmap(
            lambda ps: st.lists(amounts, min_size=len(ps), max_size=len(ps)).map(
                lambda qs: [[p, q] for p, q in zip(sorted(ps, reverse=descending), qs, strict=True)]
            )
        )
    return chosen.flatmap(
        lambda ps: st.lists(
            st.one_of(amounts, st.just("0")), min_size=len(ps), max_size=len(ps)
        ).map(lambda qs: [[p, q] for p, q in zip(ps, qs, strict=True)])
    )


def step(kind: str) -> st.SearchStrategy[tuple[str, list[list[str]], list[list[str]], int]]:
    snapshot = kind == "snapshot"
    # Mostly the next u; now and then a gap, a repeat or an older one.
    u_step = st.sampled_from([1] * 12 + [0, 2, 5, -3])
    return st.tuples(
        st.just(kind),
        side(BID_PRICES, snapshot=snapshot),
        side(ASK_PRICES, snapshot=snapshot),
        u_step,
    )


streams = st.lists(
    st.one_of(step("delta"), step("delta"), step("snapshot")), min_size=1, max_size=30
)


@FUZZ
@given(stream=streams, first_u=st.integers(2, 10**9), depth=depths, as_bytes=st.booleans())
def test_a_stream_gives_the_models_books_and_resyncs(
    stream: list[tuple[str, list[list[str]], list[list[str]], int]],
    first_u: int,
    depth: int,
    as_bytes: bool,
) -> None:
    adapter = BybitAdapter(["ETHBTC"], depth)
    model = Model(depth)
    u = first_u
    for recv_ns, (kind, bid_levels, ask_levels, u_step) in enumerate(stream, 1):
        u = max(u + u_step, 2)  # u == 1 is a restart snapshot: its own unit test covers it
        message = {
            "topic": "orderbook.50.ETHBTC",
            "type": kind,
            "ts": recv_ns,
            "data": {"s": "ETHBTC", "b": bid_levels, "a": ask_levels, "u": u, "seq": recv_ns},
        }
        expected = model.expect(kind, {"b": bid_levels, "a": ask_levels}, u)
        events = adapter.handle_message(wire(message, as_bytes), recv_ns)
        assert [("book" if isinstance(e, VenueBook) else "resync") for e in events] == expected
        if expected == ["book"]:
            bid_top, ask_top = model.top()
            assert events == [VenueBook("bybit", "ETHBTC", bid_top, ask_top, recv_ns)]
        if expected == ["resync"]:
            assert isinstance(events[0], Resync)
            assert events[0].symbol == "ETHBTC"
