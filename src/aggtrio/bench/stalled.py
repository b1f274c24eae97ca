"""A subscriber that opens a stream and never reads a byte.

Raw HTTP/2 over a plain socket, because a grpcio client keeps reading into its own buffers
and re-opening flow-control windows: only a client that truly stops reading lets the
server's window for the stream fill, which is what a stalled subscriber looks like from
the server.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios

from aggtrio.bench.h2wire import opening_bytes


def open_stalled_stream(port: int, symbol: str) -> socket.socket:
    """Start one BookSummaryForSymbol call on 127.0.0.1:`port` with the default 64 KiB
    windows; the caller keeps the socket open and never reads it."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(opening_bytes(port, symbol))
    return sock


def unread_bytes(sock: socket.socket) -> int:
    """Bytes the server sent that wait unread in the socket's receive queue."""
    buffer = fcntl.ioctl(sock.fileno(), termios.FIONREAD, struct.pack("i", 0))
    count: int = struct.unpack("i", buffer)[0]
    return count
