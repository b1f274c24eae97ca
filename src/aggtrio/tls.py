"""TLS for the gRPC port (`serve --tls-cert/--tls-key`) and for `watch --tls [--ca]`.

gRPC over TLS needs HTTP/2 chosen by ALPN: grpcio clients refuse a server that does not
offer "h2" (STACK.md). TLS 1.2 is the oldest version accepted, as HTTP/2 requires.
"""

from __future__ import annotations

import logging
import math
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import anyio.abc
import trio
from anyio.streams.tls import TLSListener

from aggtrio.config import ConfigError

log = logging.getLogger(__name__)

ALPN_PROTOCOLS = ["h2"]
# A client that has not finished its handshake by then is gone or hostile.
HANDSHAKE_TIMEOUT = 10.0
# At most one log line per this many seconds about failed handshakes (port scanners, load
# balancer probes that only open TCP, clients that do not trust the certificate).
FAILURE_LOG_INTERVAL = 60.0


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for the certificate chain and key; ConfigError if they do not load."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    _check_readable(cert)
    _check_readable(key)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"cannot load the certificate {cert} with the key {key}: "
            f"{getattr(exc, 'reason', None) or exc}"
        ) from None
    return context


def client_context(ca: Path | None) -> ssl.SSLContext:
    """A client context trusting `ca` (PEM), or the system's roots when None."""
    if ca is not None:
        _check_readable(ca)
    try:
        context = ssl.create_default_context(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load CA certificates from {ca}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    return context


def _check_readable(path: Path) -> None:
    """ssl's own errors do not say which file is missing: name it."""
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {(exc.strerror or str(exc)).lower()}") from None


class HandshakeFailures:
    """Counts failed TLS handshakes and logs them at INFO, at most once per interval."""

    def __init__(self, log_interval: float = FAILURE_LOG_INTERVAL) -> None:
        self.count = 0
        self._log_interval = log_interval
        self._unlogged = 0
        self._next_log = -math.inf

    def record(self, exc: BaseException) -> None:
        self.count += 1
        self._unlogged += 1
        now = trio.current_time()
        if now >= self._next_log:
            log.info(
                "TLS handshake failed: %s (%d failure(s) since the last line, %d in all)",
                _reason(exc),
                self._unlogged,
                self.count,
            )
            self._unlogged = 0
            self._next_log = now + self._log_interval


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, TimeoutError):
        return f"no handshake within {HANDSHAKE_TIMEOUT:g} s"
    return str(exc) or type(exc).__name__


@dataclass(eq=False)
class CountingTLSListener(TLSListener):
    """anyio's TLSListener, but a failed handshake is counted and logged quietly.

    anyio logs each one with a traceback at ERROR; for a public port that is noise, since
    anyone can open a connection and send garbage.
    """

    failures: HandshakeFailures = field(default_factory=HandshakeFailures)

    async def handle_handshake_error(  # type: ignore[override]
        self, exc: BaseException, stream: anyio.abc.AnyByteStream
    ) -> None:
        await anyio.aclose_forcefully(stream)
        if isinstance(exc, anyio.get_cancelled_exc_class()) or not isinstance(exc, Exception):
            raise exc
        self.failures.record(exc)


def tls_listener(
    listener: anyio.abc.Listener[anyio.abc.SocketStream],
    context: ssl.SSLContext,
    failures: HandshakeFailures,
) -> CountingTLSListener:
    # standard_compatible=False: HTTP/2 frames its own end of stream, so a peer that closes
    # without TLS close_notify (as grpcio does) has lost nothing.
    return CountingTLSListener(
        listener,
        context,
        standard_compatible=False,
        handshake_timeout=HANDSHAKE_TIMEOUT,
        failures=failures,
    )
