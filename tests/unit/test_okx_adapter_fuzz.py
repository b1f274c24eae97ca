"""Whatever arrives on an OKX connection, the adapter returns events or MalformedMessageError.

The shared property and strategies of test_adapter_fuzz (which feeds every adapter arbitrary
bytes, text and JSON), with OKX's envelopes: book data (snapshots and updates whose seqIds
mostly chain, so deltas are applied and not just dropped), acks, errors, notices and
``pong``. Events must be the adapter's kinds, and every
book it publishes must be one the merge can trust.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from aggtrio.model import VenueBook
from aggtrio.venues.base import MalformedMessageError, Resync
from aggtrio.venues.okx import OkxAdapter

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
    number_text,
    wire,
    with_extras,
)

INSTRUMENTS = ["ETH-BTC", "BTC-USDT"]
KINDS = ["snapshot", "update", "update", "update", "other"]


@st.composite
def okx_levels(draw: st.DrawFn, side: st.SearchStrategy[Any]) -> Any:
    """A side from the shared strategy in OKX's ``[px, sz, "0", orders]`` shape, sometimes
    with deletions (size "0") or junk sizes mixed in."""
    levels = draw(side)
    if not isinstance(levels, list):
        return levels
    shaped: list[Any] = []
    for level in levels:
        if isinstance(level, list) and len(level) == 2 and draw(st.integers(0, 5)) != 0:
            size = draw(mostly(st.just(level[1]), st.one_of(st.just("0"), number_text)))
            shaped.append([level[0], size, "0", str(draw(st.integers(0, 50)))])
        else:
            shaped.append(level)
    return shaped


# A narrow range, so an update's prevSeqId often chains to the last seqId and is applied.
sequence_ids = mostly(st.integers(0, 2), st.one_of(st.integers(-3, 2**63), json_scalars))
okx_args = mostly(
    st.fixed_dictionaries(
        {"channel": st.just("books"), "instId": mostly(st.sampled_from(INSTRUMENTS), json_values)}
    ),
    st.one_of(json_scalars, json_containers),
)
okx_book = st.fixed_dictionaries(
    {
        "asks": okx_levels(asks),
        "bids": okx_levels(bids),
        "ts": st.integers(0, 2**45).map(str),
        "checksum": mostly(st.just(0), json_scalars),
        "prevSeqId": sequence_ids,
        "seqId": sequence_ids,
    }
)
okx_data = with_extras(
    st.fixed_dictionaries(
        {
            "arg": okx_args,
            "action": mostly(st.sampled_from(["snapshot", "update"]), json_values),
            "data": mostly(
                st.lists(mostly(okx_book, json_values), min_size=1, max_size=2), json_values
            ),
        }
    )
)
okx_control = with_extras(
    st.fixed_dictionaries(
        {
            "event": mostly(
                st.sampled_from(["subscribe", "unsubscribe", "error", "notice"]), json_values
            ),
            "arg": okx_args,
            "code": mostly(st.sampled_from(["60012", "60018", "64008"]), json_values),
            "msg": json_values,
            "connId": json_values,
        }
    )
)
okx_envelopes = st.one_of(okx_data, okx_control)


@st.composite
def okx_sessions(
    draw: st.DrawFn, length: int = 6, kinds: list[str] = KINDS
) -> list[dict[str, Any]]:
    """What one connection receives: per instrument a snapshot, then updates whose seqIds
    mostly chain (so deltas are applied, not just dropped), with arbitrary envelopes, acks,
    errors and notices mixed in."""
    messages: list[dict[str, Any]] = []
    last: dict[str, int] = {}
    for index in range(draw(st.integers(1, length))):
        kind = "snapshot" if index == 0 else draw(st.sampled_from(kinds))
        if kind == "other":
            messages.append(draw(okx_envelopes))
            continue
        inst = draw(st.sampled_from(INSTRUMENTS))
        body = dict(draw(okx_book))
        seq = last.get(inst, 0) + draw(st.integers(-1, 3))
        if kind == "snapshot":
            body["prevSeqId"] = -1
        elif draw(st.integers(0, 4)) != 0:  # mostly in sequence
            body["prevSeqId"] = last.get(inst, 0)
            small = all(isinstance(body[side], list) for side in ("bids", "asks"))
            if small and draw(st.booleans()):  # a typical delta: a level or two per side
                body["bids"], body["asks"] = body["bids"][:2], body["asks"][:2]
        body["seqId"] = max(seq, 0)
        last[inst] = body["seqId"]
        messages.append(
            {"arg": {"channel": "books", "instId": inst}, "action": kind, "data": [body]}
        )
    return messages


def handle(adapter: OkxAdapter, message: str | bytes, recv_ns: int) -> None:
    """The shared property; also: a Resync names one of our symbols."""
    try:
        events = adapter.handle_message(message, recv_ns)
    except MalformedMessageError:
        return
    for event in events:
        if isinstance(event, Resync):
            assert event.symbol in adapter.symbols
        elif isinstance(event, VenueBook):
            check_book(adapter, event, recv_ns)
        else:
            assert type(event).__name__ in ("Subscribed", "VenueError", "ReconnectRequested")


@FUZZ
@given(
    messages=st.one_of(okx_sessions(), st.lists(okx_envelopes, min_size=1, max_size=4)),
    as_bytes=st.booleans(),
    depth=depths,
    recv_ns=st.integers(0, 2**63 - 1),
)
def test_sequences_of_okx_messages(
    messages: list[dict[str, Any]], as_bytes: bool, depth: int, recv_ns: int
) -> None:
    # One connection sees the whole sequence, so snapshots are followed by deltas.
    adapter = OkxAdapter(SYMBOLS, depth)
    for message in messages:
        handle(adapter, wire(message, as_bytes), recv_ns)
    handle(adapter, b"pong" if as_bytes else "pong", recv_ns)


def _books_from_updates(messages: list[dict[str, Any]]) -> int:
    adapter = OkxAdapter(SYMBOLS, 10)
    books = 0
    for message in messages:
        try:
            events = adapter.handle_message(orjson.dumps(message), 1)
        except MalformedMessageError:
            continue
        if message.get("action") == "update":
            books += sum(isinstance(event, VenueBook) for event in events)
    return books


def test_the_strategy_reaches_books_built_from_deltas() -> None:
    """Guard against a fuzz that only exercises rejections: some generated connection must
    publish a book from an applied update."""
    find(
        okx_sessions(2, ["update"]),
        lambda messages: _books_from_updates(messages) >= 1,
        settings=settings(max_examples=2000, database=None, phases=[Phase.generate]),
    )
