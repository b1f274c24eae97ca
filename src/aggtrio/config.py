"""The service's configuration: one frozen value, and the parsers that build it.

Every parser raises ConfigError with a one-line reason; the CLI prints it and exits 2.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import attrs

from aggtrio.logs import LOG_FORMATS
from aggtrio.symbols import InvalidSymbolError, UnknownPairError, parse_symbol_list, venue_pair
from aggtrio.venues import ADAPTERS, DEFAULT_VENUES

MAX_DEPTH = 1000
# More workers than this is a typo, not a plan: each opens its own connection to every venue.
MAX_WORKERS = 64
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message is a one-line reason."""


def _frozen_mapping(value: Mapping[str, str]) -> Mapping[str, str]:
    return types.MappingProxyType(dict(value))


@attrs.frozen(kw_only=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    symbols: tuple[str, ...] = ("ETHBTC",)
    venues: tuple[str, ...] = DEFAULT_VENUES
    # Replacement base endpoints (scheme://host:port) by venue name.
    venue_urls: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    depth: int = 10
    log_level: str = "INFO"
    # "text" for people, "json" (one object per line) for log shippers.
    log_format: str = "text"
    # Seconds without any message before a venue connection counts as stale; None means
    # each venue's own default.
    liveness_timeout: float | None = None
    # Client streams the process serves at once (both RPCs, all symbols); more are refused
    # with RESOURCE_EXHAUSTED.
    max_subscribers: int = 1000
    # Seconds without a change after which a subscriber is sent the latest summary again.
    resend_interval: float = 1.0
    # Listen with SO_REUSEPORT, sharing the port with the other workers of `serve --workers`.
    # Off for a lone server, so that a second server on its port fails loudly instead of
    # silently taking half the clients.
    reuse_port: bool = False
    # Port of the Prometheus endpoint (/metrics); None: no endpoint. With `serve --workers N`
    # worker i (1..N) serves it on metrics_port + i - 1.
    metrics_port: int | None = None
    # PEM certificate chain and private key: with both, the gRPC port speaks TLS only.
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def __attrs_post_init__(self) -> None:
        if self.metrics_port and self.metrics_port == self.port:
            raise ConfigError(
                f"the metrics port and the gRPC port are both {self.port}; "
                "give --metrics-port another"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "--tls-key" if self.tls_key is None else "--tls-cert"
            raise ConfigError(f"TLS needs both --tls-cert and --tls-key; {missing} is not set")
        # Known offline, so refuse at startup rather than subscribe to a pair no venue has.
        for venue in self.venues:
            for symbol in self.symbols:
                try:
                    venue_pair(venue, symbol)
                except UnknownPairError as exc:
                    raise ConfigError(f"{exc}; drop {venue} from --venues or the pair") from None

    @property
    def default_symbol(self) -> str:
        return self.symbols[0]

    def base_url(self, venue: str) -> str:
        return self.venue_urls.get(venue, ADAPTERS[venue].default_url)


def parse_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ConfigError(f"port {text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} is out of range 0-65535")
    return port


def parse_symbols(text: str) -> tuple[str, ...]:
    try:
        return parse_symbol_list(text)
    except InvalidSymbolError as exc:
        raise ConfigError(str(exc)) from None


def parse_venues(text: str) -> tuple[str, ...]:
    venues: list[str] = []
    for part in text.split(","):
        name = part.strip().lower()
        if name not in ADAPTERS:
            raise ConfigError(f"unknown venue {part.strip()!r} (known: {', '.join(ADAPTERS)})")
        if name not in venues:
            venues.append(name)
    return tuple(venues)


def parse_venue_url(text: str) -> tuple[str, str]:
    """Parse ``NAME=ws[s]://host[:port]`` into (venue, base URL)."""
    name, sep, url = text.partition("=")
    name = name.strip().lower()
    if not sep:
        raise ConfigError(f"venue URL {text!r} is not NAME=URL")
    if name not in ADAPTERS:
        raise ConfigError(f"unknown venue {name!r} in venue URL (known: {', '.join(ADAPTERS)})")
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ConfigError(f"venue URL {url!r} must start with ws:// or wss://")
    try:
        parts.port  # noqa: B018 - raises ValueError when the port is not a number
    except ValueError:
        raise ConfigError(f"venue URL {url!r} has an invalid port") from None
    if parts.netloc.endswith(":"):
        raise ConfigError(f"venue URL {url!r} has an empty port")
    if not parts.hostname:
        raise ConfigError(f"venue URL {url!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(
            f"venue URL {url!r} must be a base endpoint (scheme, host, port): "
            "the adapter adds the path"
        )
    return name, f"{parts.scheme}://{parts.netloc}"


def parse_venue_urls(texts: list[str]) -> dict[str, str]:
    return dict(parse_venue_url(text) for text in texts)


def parse_depth(text: str) -> int:
    try:
        depth = int(text)
    except ValueError:
        raise ConfigError(f"depth {text!r} is not a number") from None
    if not 1 <= depth <= MAX_DEPTH:
        raise ConfigError(f"depth {depth} is out of range 1-{MAX_DEPTH}")
    return depth


def parse_max_subscribers(text: str) -> int:
    try:
        limit = int(text)
    except ValueError:
        raise ConfigError(f"subscriber limit {text!r} is not a whole number") from None
    if limit < 1:
        raise ConfigError(f"subscriber limit {limit} must be at least 1")
    return limit


def parse_workers(text: str) -> int:
    try:
        workers = int(text)
    except ValueError:
        raise ConfigError(f"worker count {text!r} is not a whole number") from None
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"worker count {workers} is out of range 1-{MAX_WORKERS}")
    return workers


def parse_log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"log level {text!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def parse_log_format(text: str) -> str:
    log_format = text.strip().lower()
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"log format {text!r} is not one of {', '.join(LOG_FORMATS)}")
    return log_format


def parse_path(text: str) -> Path:
    if not text.strip():
        raise ConfigError("file name is empty")
    return Path(text)


def parse_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not a number of seconds") from None
    if not 0 < seconds < 86400:
        raise ConfigError(f"{seconds:g} seconds is out of range (0, 86400)")
    return seconds


@attrs.frozen(kw_only=True)
class WatchConfig:
    """Where `aggtrio watch` connects, and how."""

    server: str = "127.0.0.1:50051"
    # Connect with TLS, trusting the system's CAs or, if set, this PEM bundle.
    tls: bool = False
    ca: Path | None = None


def parse_server(text: str) -> str:
    """A gRPC server address, HOST:PORT or [IPv6]:PORT, as given."""
    from aggtrio.watch import parse_server_address

    try:
        parse_server_address(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return text.strip()


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_switch(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigError(f"{text!r} is not one of {', '.join(_TRUE + _FALSE)}")
