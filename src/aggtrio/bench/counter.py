"""The counting client process: many subscriber streams, each on its own connection, that
only count the messages they receive. For fan-out and memory.

grpcio would be the natural client, but with a connection per stream it costs 70-140 µs of
CPU per message on this kind of machine (measured), more than the server spends sending
one: a core of grpcio clients cannot take what a core of server sends, and the benchmark
would measure the clients. So this client speaks just enough HTTP/2 by hand: it opens each
connection with bytes h2 prepared once (h2wire.py), then walks the frames it receives,
counts complete gRPC messages, answers SETTINGS and PING, and re-opens flow-control windows
(16 MiB, like a grpcio client that has probed the bandwidth). One epoll loop serves every
connection and the command pipe.

The commands and replies are those of client.py, in "count" mode only.
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

WINDOW = 1 << 24
OPEN_TIMEOUT = 30.0
RECEIVE_SIZE = 256 * 1024


class StreamEndedError(Exception):
    """The server ended the stream or closed the connection."""


class Connection:
    """One connection carrying one stream, and what arrived on it."""

    __slots__ = ("buffer", "messages", "prefix", "remaining", "sock", "unacknowledged")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.messages = 0
        # The gRPC message being received: its 5-byte prefix so far, then the bytes to come.
        self.prefix = b""
        self.remaining = 0
        self.unacknowledged = 0  # flow-controlled bytes received since the last window update

    def receive(self, counters: Counters) -> None:
        data = self.sock.recv(RECEIVE_SIZE)
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
                self._data(memoryview(buffer)[start : start + length], counters)
                self.unacknowledged += length
            elif kind == SETTINGS and not flags & 0x1:
                replies += SETTINGS_ACK
            elif kind == PING and not flags & 0x1:
                replies += b"\x00\x00\x08\x06\x01\x00\x00\x00\x00" + buffer[start : start + 8]
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

    def _data(self, payload: memoryview, counters: Counters) -> None:
        at, size = 0, len(payload)
        while at < size:
            if self.remaining:
                taken = min(self.remaining, size - at)
                self.remaining -= taken
                at += taken
                if not self.remaining:
                    self.messages += 1
                    counters.messages += 1
                continue
            needed = GRPC_PREFIX_SIZE - len(self.prefix)
            self.prefix += payload[at : at + needed]
            at += needed
            if len(self.prefix) == GRPC_PREFIX_SIZE:
                self.remaining = int.from_bytes(self.prefix[1:], "big")
                counters.bytes += self.remaining
                self.prefix = b""
                if not self.remaining:
                    self.messages += 1
                    counters.messages += 1


class Counters:
    __slots__ = ("bytes", "messages")

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reply(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class Counter:
    def __init__(self) -> None:
        self.poller = select.epoll()
        self.connections: dict[int, Connection] = {}
        self.counters = Counters()
        self.errors: list[str] = []
        # (deadline, streams) while an "open" waits for every stream's first message.
        self.opening: tuple[float, int] | None = None
        self.mark = (0, 0, 0.0, 0.0)

    def open(self, port: int, streams: int, symbol: str) -> None:
        opening = opening_bytes(port, symbol, WINDOW)
        for _ in range(streams):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(opening)
            sock.setblocking(False)
            self.connections[sock.fileno()] = Connection(sock)
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

    def command(self, command: dict[str, Any]) -> None:
        cmd = command.get("cmd")
        if cmd == "open" and command.get("mode") == "count":
            self.open(command["port"], command["streams"], command["symbol"])
        elif cmd == "mark":
            c = self.counters
            self.mark = (c.messages, c.bytes, time.perf_counter(), _cpu_seconds())
            reply("marked")
        elif cmd == "collect":
            messages, nbytes, started, cpu = self.mark
            reply(
                "collected",
                messages=self.counters.messages - messages,
                bytes=self.counters.bytes - nbytes,
                seconds=time.perf_counter() - started,
                cpu_seconds=_cpu_seconds() - cpu,
                errors=self.errors[:10],
                histogram=None,
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
                    connection.receive(self.counters)
                except BlockingIOError:
                    continue
                except (StreamEndedError, OSError) as exc:
                    self.errors.append(str(exc))
                    self.poller.unregister(fd)
                    del self.connections[fd]
                    connection.sock.close()
            self.check_open()


def main() -> None:
    Counter().run()


if __name__ == "__main__":
    main()
