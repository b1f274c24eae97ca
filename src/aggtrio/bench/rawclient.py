"""The load-generating client process: many subscriber streams, each on a connection of
its own, that time or count what they receive.

grpcio would be the natural client, but with a connection per stream it costs 70-140 µs
of CPU per message on this kind of machine (measured), more than the server spends
sending one: a core of grpcio clients cannot take what a core of server sends, and the
messages of one publish queue up in each client process for milliseconds, which then
counts as latency. So this client speaks just enough HTTP/2 by hand: it opens each
connection with bytes h2 prepared once (h2wire.py), walks the frames it receives, takes
out complete gRPC messages, answers SETTINGS and PING, and re-opens flow-control windows
(16 MiB, as a grpcio client does once it has probed the bandwidth). One epoll loop serves
every connection and the command pipe. Run as ``python -m aggtrio.bench.rawclient``;
commands arrive as JSON lines on standard input, one reply line each:

* ``{"cmd": "open", "port": P, "streams": N, "mode": "latency" | "count", "symbol": S}``
  starts N ``BookSummaryForSymbol`` streams and replies ``open`` once each has had a
  message;
* ``{"cmd": "mark"}`` starts the measured window (clears the histogram, notes counters,
  time and CPU time);
* ``{"cmd": "collect"}`` replies with what arrived since the mark: messages, bytes,
  seconds, CPU seconds, errors, and in latency mode the histogram (µs, encoded) of
  ``time.time_ns()`` right after the read that completed a summary, minus its
  ``arrival_time``; a resend (an ``arrival_time`` seen just before) is skipped;
* ``{"cmd": "close"}`` closes every connection.

It exits when its standard input closes.
"""

from __future__ import annotations

import json
import os
import resource
import select
import socket
import sys
import time
from typing import Any

from aggtrio._proto.orderbook_pb2 import Summary
from aggtrio.bench.h2wire import (
    DATA,
    END_STREAM,
    FRAME_HEADER_SIZE,
    GOAWAY,
    GRPC_PREFIX_SIZE,
    HEADERS,
    PING,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ACK,
    opening_bytes,
    parse_frame_header,
    window_update,
)
from aggtrio.bench.hdr import encode, new_histogram, record

WINDOW = 1 << 24
OPEN_TIMEOUT = 30.0
RECEIVE_SIZE = 256 * 1024
PING_ACK_HEADER = b"\x00\x00\x08\x06\x01\x00\x00\x00\x00"


class StreamEndedError(Exception):
    """The server ended the stream or closed the connection."""


class Load:
    """What the streams of this process received."""

    __slots__ = ("bytes", "histogram", "messages", "recording")

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.histogram: Any = new_histogram()
        self.recording = False


class Connection:
    """One connection carrying one stream, and the message being received on it."""

    __slots__ = (
        "body",
        "buffer",
        "last_arrival",
        "length",
        "load",
        "messages",
        "prefix",
        "remaining",
        "sock",
        "timed",
        "unacknowledged",
    )

    def __init__(self, sock: socket.socket, load: Load, *, timed: bool) -> None:
        self.sock = sock
        self.load = load
        self.timed = timed
        self.buffer = bytearray()
        self.messages = 0
        # The gRPC message being received: its 5-byte prefix so far, then the bytes to come
        # (kept only when timed: the arrival_time is in them).
        self.prefix = b""
        self.remaining = 0
        self.length = 0
        self.body = bytearray()
        self.last_arrival = 0
        self.unacknowledged = 0  # flow-controlled bytes received since the last window update

    def receive(self) -> None:
        data = self.sock.recv(RECEIVE_SIZE)
        now = time.time_ns()
        if not data:
            raise StreamEndedError("connection closed by the server")
        buffer = self.buffer
        buffer += data
        at, end = 0, len(buffer)
        replies = b""
        while end - at >= FRAME_HEADER_SIZE:
            length, kind, flags, _stream = parse_frame_header(buffer, at)
            start = at + FRAME_HEADER_SIZE
            if end - start < length:
                break
            if kind == DATA:
                self._data(memoryview(buffer)[start : start + length], now)
                self.unacknowledged += length
            elif kind == SETTINGS and not flags & 0x1:
                replies += SETTINGS_ACK
            elif kind == PING and not flags & 0x1:
                replies += PING_ACK_HEADER + buffer[start : start + 8]
            elif kind in (RST_STREAM, GOAWAY) or (kind == HEADERS and flags & END_STREAM):
                raise StreamEndedError(f"the server ended the stream (frame type {kind})")
            at = start + length
        del buffer[:at]
        if self.unacknowledged >= WINDOW // 2:
            replies += window_update(0, self.unacknowledged)
            replies += window_update(1, self.unacknowledged)
            self.unacknowledged = 0
        if replies:
            self.sock.sendall(replies)

    def _data(self, payload: memoryview, now: int) -> None:
        at, size = 0, len(payload)
        while at < size:
            if not self.remaining:
                needed = GRPC_PREFIX_SIZE - len(self.prefix)
                self.prefix += payload[at : at + needed]
                at += needed
                if len(self.prefix) < GRPC_PREFIX_SIZE:
                    return
                self.remaining = self.length = int.from_bytes(self.prefix[1:], "big")
                self.prefix = b""
                if self.remaining:
                    continue
            taken = min(self.remaining, size - at)
            if self.timed:
                self.body += payload[at : at + taken]
            self.remaining -= taken
            at += taken
            if not self.remaining:
                self._complete(now)

    def _complete(self, now: int) -> None:
        load = self.load
        if self.timed:
            arrival = Summary.FromString(bytes(self.body)).arrival_time
            self.body.clear()
            if arrival == self.last_arrival:
                return  # a resend of the summary already timed
            self.last_arrival = arrival
            if load.recording:
                record(load.histogram, (now - arrival) // 1000)
        self.messages += 1
        load.messages += 1
        load.bytes += self.length


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reply(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class Client:
    def __init__(self) -> None:
        self.poller = select.epoll()
        self.connections: dict[int, Connection] = {}
        self.load = Load()
        self.errors: list[str] = []
        # (deadline, streams) while an "open" waits for every stream's first message.
        self.opening: tuple[float, int] | None = None
        self.mark = (0, 0, 0.0, 0.0)

    def open(self, port: int, streams: int, mode: str, symbol: str) -> None:
        opening = opening_bytes(port, symbol, WINDOW)
        for _ in range(streams):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(opening)
            sock.setblocking(False)
            self.connections[sock.fileno()] = Connection(sock, self.load, timed=mode == "latency")
            self.poller.register(sock.fileno(), select.EPOLLIN)
        self.opening = (time.monotonic() + OPEN_TIMEOUT, streams)

    def check_open(self) -> None:
        if self.opening is None:
            return
        deadline, streams = self.opening
        if self.errors:
            self.opening = None
            reply("error", message=f"open: {self.errors[0]}")
        elif all(c.messages for c in self.connections.values()):
            self.opening = None
            reply("open", streams=streams)
        elif time.monotonic() > deadline:
            self.opening = None
            reply("error", message=f"open: no message on every stream within {OPEN_TIMEOUT:g} s")

    def close(self) -> None:
        for fd, connection in self.connections.items():
            self.poller.unregister(fd)
            connection.sock.close()
        self.connections.clear()
        self.errors.clear()
        self.load.recording = False

    def command(self, command: dict[str, Any]) -> None:
        cmd = command.get("cmd")
        load = self.load
        if cmd == "open":
            self.open(command["port"], command["streams"], command["mode"], command["symbol"])
        elif cmd == "mark":
            load.histogram = new_histogram()
            load.recording = True
            self.mark = (load.messages, load.bytes, time.perf_counter(), _cpu_seconds())
            reply("marked")
        elif cmd == "collect":
            messages, nbytes, started, cpu = self.mark
            reply(
                "collected",
                messages=load.messages - messages,
                bytes=load.bytes - nbytes,
                seconds=time.perf_counter() - started,
                cpu_seconds=_cpu_seconds() - cpu,
                errors=self.errors[:10],
                histogram=encode(load.histogram),
            )
        elif cmd == "close":
            self.close()
            reply("closed")
        else:
            reply("error", message=f"unknown command {command}")

    def run(self) -> None:
        stdin = sys.stdin.fileno()
        os.set_blocking(stdin, False)
        self.poller.register(stdin, select.EPOLLIN)
        pending = b""
        while True:
            for fd, _ in self.poller.poll(0.1):
                if fd == stdin:
                    chunk = os.read(stdin, 65536)
                    if not chunk:
                        return
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        self.command(json.loads(line))
                    continue
                connection = self.connections.get(fd)
                if connection is None:
                    continue
                try:
                    connection.receive()
                except BlockingIOError:
                    continue
                except (StreamEndedError, OSError) as exc:
                    self.errors.append(str(exc))
                    self.poller.unregister(fd)
                    del self.connections[fd]
                    connection.sock.close()
            self.check_open()


def main() -> None:
    Client().run()


if __name__ == "__main__":
    main()
