"""The client side of one gRPC server-streaming call, as raw HTTP/2 bytes.

Used by the benchmark's own minimal clients (the stalled subscriber, the counting client):
h2 writes the opening bytes of a connection once; what comes back is read frame by frame
without h2, which costs more per frame than the server spends sending one.
"""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.settings

from aggtrio._proto.orderbook_pb2 import SummaryRequest

METHOD = "/orderbook.OrderbookAggregator/BookSummaryForSymbol"
DEFAULT_WINDOW = 65_535

# Frame types and flags (RFC 9113, section 6).
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM = ACK = 0x1
FRAME_HEADER = struct.Struct(">I B I")  # 24-bit length (in the first 4 bytes), type, flags, id
FRAME_HEADER_SIZE = 9
GRPC_PREFIX_SIZE = 5  # compressed flag, 4-byte big-endian length
SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"


def opening_bytes(port: int, symbol: str, window: int = DEFAULT_WINDOW) -> bytes:
    """Connection preface, settings and one BookSummaryForSymbol call on stream 1, its
    request sent and half-closed; `window` is the receive window of the stream and the
    connection."""
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    if window != DEFAULT_WINDOW:
        connection.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        connection.increment_flow_control_window(window - DEFAULT_WINDOW)
    connection.send_headers(
        1,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", METHOD),
            (":authority", f"127.0.0.1:{port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    )
    request = SummaryRequest(symbol=symbol).SerializeToString()
    connection.send_data(1, struct.pack(">BI", 0, len(request)) + request, end_stream=True)
    data: bytes = connection.data_to_send()
    return data


def window_update(stream_id: int, increment: int) -> bytes:
    return struct.pack(">I B B I I", 4, 0x8, 0, stream_id, increment)[1:]


def parse_frame_header(data: bytes | bytearray | memoryview, at: int) -> tuple[int, int, int, int]:
    """(payload length, type, flags, stream id) of the frame header at `at`."""
    length_type, flags, stream_id = FRAME_HEADER.unpack_from(data, at)
    return length_type >> 8, length_type & 0xFF, flags, stream_id & 0x7FFF_FFFF
