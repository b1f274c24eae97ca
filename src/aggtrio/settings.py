"""Every setting of `serve` and `watch`, declared once, and where each value comes from.

One table row per option (name, flag, environment variable, kind, default, help): the
command-line flags, the environment and config-file lookups, `serve --print-config`, the
worker processes' command lines and the README's table all derive from it. A value comes
from the first of: its flag, its environment variable, the TOML config file (`--config
PATH` or AGGTRIO_CONFIG; the option's name is its key in the command's section), its
default. A bad value is a ConfigError naming its source, e.g. ``AGGTRIO_PORT: port 'abc'
is not a number`` or ``aggtrio.toml: [serve] depth: depth 0 is out of range 1-1000``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import attrs

from aggtrio.config import (
    ConfigError,
    ServeConfig,
    WatchConfig,
    parse_depth,
    parse_log_format,
    parse_log_level,
    parse_max_subscribers,
    parse_path,
    parse_port,
    parse_seconds,
    parse_server,
    parse_switch,
    parse_symbols,
    parse_venue_urls,
    parse_venues,
    parse_workers,
)

T = TypeVar("T")

CONFIG_ENV = "AGGTRIO_CONFIG"
DEFAULT = "default"


# --- kinds: how one type of value is read and written in each place ---------------------------


class Kind(Protocol):
    def from_text(self, text: str) -> Any:
        """The value of an environment variable."""

    def from_flag(self, value: Any) -> Any:
        """What argparse stored for the flag."""

    def from_toml(self, value: object) -> Any:
        """A value read from the config file."""

    def to_toml(self, value: Any) -> str:
        """The value as a TOML literal that `from_toml` reads back."""

    def to_args(self, flag: str, value: Any) -> list[str]:
        """Command-line arguments that `from_flag` reads back."""

    def argparse_options(self) -> dict[str, Any]:
        """Extra add_argument() keywords."""


def _toml_string(text: str) -> str:
    # A JSON string is a TOML basic string with the same escapes, but for DEL, which TOML
    # wants escaped and JSON leaves as it is.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _describe(value: object) -> str:
    """What a TOML value is, for an error: "a string ('50051')", "an array", …"""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return f"{names.get(type(value), 'a date or time')} ({value!r})"


@attrs.frozen
class Scalar(Generic[T]):
    """One piece of text on the command line and in the environment; in TOML, a value of
    `toml_types` (a number for a port, say), validated by the same parser."""

    parse: Callable[[str], T]
    toml_types: tuple[type, ...]
    expected: str  # what the TOML value should be, for errors: "an integer"
    metavar: str | None = None  # how --help names the value

    def from_text(self, text: str) -> T:
        return self.parse(text)

    def from_flag(self, value: Any) -> T:
        return self.parse(str(value))

    def from_toml(self, value: object) -> T:
        if isinstance(value, bool) or not isinstance(value, self.toml_types):
            raise ConfigError(f"expected {self.expected}, not {_describe(value)}")
        return self.parse(str(value))

    def to_toml(self, value: T) -> str:
        return repr(value) if isinstance(value, (int, float)) else _toml_string(str(value))

    def to_args(self, flag: str, value: T) -> list[str]:
        # FLAG=VALUE, so that no value (a host, say) can be read as a flag.
        return [f"{flag}={value}"]

    def argparse_options(self) -> dict[str, Any]:
        return {} if self.metavar is None else {"metavar": self.metavar}


@attrs.frozen
class CommaList:
    """A comma-separated list on the command line and in the environment; in TOML, an
    array of strings (or the same comma-separated string)."""

    parse: Callable[[str], tuple[str, ...]]

    def from_text(self, text: str) -> tuple[str, ...]:
        return self.parse(text)

    def from_flag(self, value: Any) -> tuple[str, ...]:
        return self.parse(str(value))

    def from_toml(self, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            return self.parse(value)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"expected an array of strings, not {_describe(value)}")
        return self.parse(",".join(value))

    def to_toml(self, value: tuple[str, ...]) -> str:
        return "[" + ", ".join(_toml_string(item) for item in value) + "]"

    def to_args(self, flag: str, value: tuple[str, ...]) -> list[str]:
        return [f"{flag}={','.join(value)}"]

    def argparse_options(self) -> dict[str, Any]:
        return {}


@attrs.frozen
class VenueUrls:
    """Venue name -> base URL: a repeatable NAME=URL flag, space-separated NAME=URL words in
    the environment, a table in TOML."""

    def from_text(self, text: str) -> Mapping[str, str]:
        return parse_venue_urls(text.split())

    def from_flag(self, value: Any) -> Mapping[str, str]:
        return parse_venue_urls(list(value))

    def from_toml(self, value: object) -> Mapping[str, str]:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"expected a table of venue = URL strings, not {_describe(value)}")
        return parse_venue_urls([f"{name}={url}" for name, url in value.items()])

    def to_toml(self, value: Mapping[str, str]) -> str:
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{name} = {_toml_string(u)}" for name, u in value.items()) + " }"

    def to_args(self, flag: str, value: Mapping[str, str]) -> list[str]:
        return [f"{flag}={name}={url}" for name, url in value.items()]

    def argparse_options(self) -> dict[str, Any]:
        return {"action": "append", "metavar": "NAME=URL"}


@attrs.frozen
class Switch:
    """On or off: --flag / --no-flag, 1/true/yes/on or 0/false/no/off, a TOML boolean."""

    def from_text(self, text: str) -> bool:
        return parse_switch(text)

    def from_flag(self, value: Any) -> bool:
        return bool(value)

    def from_toml(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, not {_describe(value)}")
        return value

    def to_toml(self, value: bool) -> str:
        return "true" if value else "false"

    def to_args(self, flag: str, value: bool) -> list[str]:
        return [flag if value else "--no-" + flag.removeprefix("--")]

    def argparse_options(self) -> dict[str, Any]:
        return {"action": argparse.BooleanOptionalAction}


TEXT = Scalar(str.strip, (str,), "a string")
PORT = Scalar(parse_port, (int,), "an integer", "PORT")
SECONDS = Scalar(parse_seconds, (int, float), "a number", "SECONDS")
PATH = Scalar(parse_path, (str,), "a string", "PATH")


# --- the table ----------------------------------------------------------------------------------


@attrs.frozen
class Option:
    name: str  # the configuration's attribute, and the key in the config file's section
    flag: str
    env: str
    kind: Kind
    default: Any
    help: str
    # The default as the help and the README show it, when the value itself would not say.
    default_text: str | None = None
    # Older names of the environment variable, still read after `env`.
    env_aliases: tuple[str, ...] = ()

    def shown_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        if isinstance(self.default, tuple):
            return ",".join(self.default)
        return str(self.default)


def _serve_default(name: str) -> Any:
    """ServeConfig's default for `name`: the class states it once, the table reads it."""
    return attrs.fields_dict(ServeConfig)[name].default


def _watch_default(name: str) -> Any:
    return attrs.fields_dict(WatchConfig)[name].default


SERVE_OPTIONS: tuple[Option, ...] = (
    Option(
        "host",
        "--host",
        "AGGTRIO_HOST",
        TEXT,
        _serve_default("host"),
        "address to listen on (0.0.0.0 for all)",
    ),
    Option(
        "port",
        "--port",
        "AGGTRIO_PORT",
        PORT,
        _serve_default("port"),
        "gRPC port; 0 picks a free one (logged)",
    ),
    Option(
        "symbols",
        "--symbols",
        "AGGTRIO_SYMBOLS",
        CommaList(parse_symbols),
        _serve_default("symbols"),
        "comma-separated pairs; the first is BookSummary's",
    ),
    Option(
        "venues",
        "--venues",
        "AGGTRIO_VENUES",
        CommaList(parse_venues),
        _serve_default("venues"),
        "comma-separated venues to merge",
    ),
    Option(
        "venue_urls",
        "--venue-url",
        "AGGTRIO_VENUE_URL",
        VenueUrls(),
        {},
        "replace a venue's base endpoint (scheme, host, port), e.g. "
        "binance=ws://127.0.0.1:9001; repeatable (environment: space-separated)",
        default_text="the real endpoints",
    ),
    Option(
        "depth",
        "--depth",
        "AGGTRIO_DEPTH",
        Scalar(parse_depth, (int,), "an integer", "N"),
        _serve_default("depth"),
        "levels per side in a summary (1-1000)",
    ),
    Option(
        "liveness_timeout",
        "--liveness-timeout",
        "AGGTRIO_LIVENESS_TIMEOUT",
        SECONDS,
        _serve_default("liveness_timeout"),
        "seconds without any venue message before a connection is stale",
        default_text="each venue's own",
    ),
    Option(
        "max_subscribers",
        "--max-subscribers",
        "AGGTRIO_MAX_SUBSCRIBERS",
        Scalar(parse_max_subscribers, (int,), "an integer", "N"),
        _serve_default("max_subscribers"),
        "client streams served at once, over both RPCs and all symbols (at least 1); more "
        "are refused with RESOURCE_EXHAUSTED",
    ),
    Option(
        "resend_interval",
        "--resend-interval",
        "AGGTRIO_RESEND_INTERVAL",
        SECONDS,
        _serve_default("resend_interval"),
        "seconds without a change after which a client is sent the latest summary again "
        "(more than 0)",
    ),
    Option(
        "log_level",
        "--log-level",
        "AGGTRIO_LOG_LEVEL",
        Scalar(parse_log_level, (str,), "a string", "LEVEL"),
        _serve_default("log_level"),
        "DEBUG, INFO, WARNING or ERROR",
    ),
    Option(
        "log_format",
        "--log-format",
        "AGGTRIO_LOG_FORMAT",
        Scalar(parse_log_format, (str,), "a string", "{text,json}"),
        _serve_default("log_format"),
        "text (for people) or json (one object per line, for log shippers)",
    ),
    Option(
        "workers",
        "--workers",
        "AGGTRIO_WORKERS",
        Scalar(parse_workers, (int,), "an integer", "N"),
        1,
        "processes sharing the port (1-64), each with its own venue connections "
        "(README: Using more than one core)",
    ),
    Option(
        "metrics_port",
        "--metrics-port",
        "AGGTRIO_METRICS_PORT",
        PORT,
        _serve_default("metrics_port"),
        "Prometheus metrics at http://HOST:PORT/metrics (with --workers N, worker i on "
        "PORT+i-1; README: Metrics)",
        default_text="off",
    ),
    Option(
        "tls_cert",
        "--tls-cert",
        "AGGTRIO_TLS_CERT",
        PATH,
        _serve_default("tls_cert"),
        "PEM certificate chain: the gRPC port speaks TLS only (with --tls-key; README: TLS)",
        default_text="off",
    ),
    Option(
        "tls_key",
        "--tls-key",
        "AGGTRIO_TLS_KEY",
        PATH,
        _serve_default("tls_key"),
        "PEM private key of --tls-cert",
        default_text="off",
    ),
)

WATCH_OPTIONS: tuple[Option, ...] = (
    Option(
        "server",
        "--server",
        "AGGTRIO_WATCH_SERVER",
        Scalar(parse_server, (str,), "a string", "HOST:PORT"),
        _watch_default("server"),
        "HOST:PORT of the server",
        env_aliases=("AGGTRIO_SERVER",),
    ),
    Option(
        "tls",
        "--tls",
        "AGGTRIO_WATCH_TLS",
        Switch(),
        _watch_default("tls"),
        "connect with TLS",
        default_text="off",
    ),
    Option(
        "ca",
        "--ca",
        "AGGTRIO_WATCH_CA",
        PATH,
        _watch_default("ca"),
        "PEM bundle of the CAs to trust (implies --tls)",
        default_text="the system's",
    ),
)

SECTIONS: dict[str, tuple[Option, ...]] = {"serve": SERVE_OPTIONS, "watch": WATCH_OPTIONS}


def all_env_names() -> set[str]:
    names = {CONFIG_ENV}
    for options in SECTIONS.values():
        for option in options:
            names.add(option.env)
            names.update(option.env_aliases)
    return names


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse an AGGTRIO_* variable that no option reads: a misspelt one would otherwise
    be silently ignored, and the default used instead."""
    prefix = "AGGTRIO_"
    known = {name.removeprefix(prefix): name for name in all_env_names()}
    for name in sorted(environ):
        if name.startswith(prefix) and name not in known.values():
            # Matched without the prefix, which every name shares.
            close = difflib.get_close_matches(name.removeprefix(prefix), list(known), n=1)
            hint = f"did you mean {known[close[0]]}?" if close else "--help lists them"
            raise ConfigError(f"unknown environment variable {name} ({hint})")


def add_flags(parser: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    """One flag per option; absent flags stay None so that the next source is looked at."""
    for option in options:
        parser.add_argument(
            option.flag,
            dest=option.name,
            default=None,
            help=f"{option.help} (default: {option.shown_default()}; ${option.env})",
            **option.kind.argparse_options(),
        )


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"TOML file of settings; flags and environment variables win (${CONFIG_ENV})",
    )


# --- the config file ----------------------------------------------------------------------------


@attrs.frozen
class ConfigFile:
    """A parsed config file: for each section, the values it sets, already validated."""

    name: str  # as given, for messages
    sections: Mapping[str, Mapping[str, Any]]


def _unknown(what: str, name: str, known: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(known)}"
    return ConfigError(f"unknown {what} {name!r} ({hint})")


def parse_config_file(name: str, text: str) -> ConfigFile:
    """Validate every section of a config file, not only the running command's: a typo
    anywhere is reported the first time the file is used."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: not valid TOML: {exc}") from None
    sections: dict[str, Mapping[str, Any]] = {}
    for section, table in document.items():
        if section not in SECTIONS:
            raise ConfigError(f"{name}: {_unknown('section', section, list(SECTIONS))}")
        if not isinstance(table, dict):
            raise ConfigError(f"{name}: {section} must be a [{section}] table")
        options = {option.name: option for option in SECTIONS[section]}
        values: dict[str, Any] = {}
        for key, raw in table.items():
            where = f"{name}: [{section}] {key}"
            option = options.get(key)
            if option is None:
                raise ConfigError(f"{name}: [{section}] {_unknown('setting', key, list(options))}")
            try:
                values[key] = option.kind.from_toml(raw)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        sections[section] = values
    return ConfigFile(name, sections)


def load_config_file(flag_value: str | None, environ: Mapping[str, str]) -> ConfigFile | None:
    """The file named by `--config` or else AGGTRIO_CONFIG, parsed; None if neither is set."""
    if flag_value is not None:
        source, name = "--config", flag_value
    elif environ.get(CONFIG_ENV):
        source, name = CONFIG_ENV, environ[CONFIG_ENV]
    else:
        return None
    try:
        text = Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read {name}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: {name} is not UTF-8 text") from None
    return parse_config_file(name, text)


# --- resolution ---------------------------------------------------------------------------------


@attrs.frozen
class Resolved:
    """Each option's effective value, and where it came from (a flag, a variable, the
    config file's name, or "default")."""

    section: str
    values: Mapping[str, Any]
    sources: Mapping[str, str]

    def to_toml(self) -> str:
        """The values as a config file `--config` loads back, sources as comments."""
        lines = [
            f"# aggtrio {self.section}: the effective configuration, loadable with --config.",
            "# After each value, where it came from: flag > environment > config file > default.",
            f"[{self.section}]",
        ]
        for option in SECTIONS[self.section]:
            value, source = self.values[option.name], self.sources[option.name]
            if value is None:
                lines.append(f"# {option.name}: not set ({option.shown_default()})  # {source}")
            else:
                lines.append(f"{option.name} = {option.kind.to_toml(value)}  # {source}")
        return "\n".join(lines) + "\n"


def resolve(
    section: str,
    args: argparse.Namespace,
    environ: Mapping[str, str],
    config_file: ConfigFile | None,
) -> Resolved:
    """Flag > environment variable > config file > default, for every option of `section`."""
    from_file = config_file.sections.get(section, {}) if config_file is not None else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in SECTIONS[section]:
        flag_value = getattr(args, option.name, None)
        env_name = next((n for n in (option.env, *option.env_aliases) if n in environ), None)
        try:
            if flag_value is not None:
                source = option.flag
                value = option.kind.from_flag(flag_value)
            elif env_name is not None:
                source = env_name
                value = option.kind.from_text(environ[env_name])
            elif option.name in from_file:
                assert config_file is not None
                source, value = config_file.name, from_file[option.name]
            else:
                source, value = DEFAULT, option.default
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        values[option.name] = value
        sources[option.name] = source
    return Resolved(section, values, sources)


def serve_config(resolved: Resolved) -> ServeConfig:
    fields = attrs.fields_dict(ServeConfig)
    return ServeConfig(**{k: v for k, v in resolved.values.items() if k in fields})


def watch_config(resolved: Resolved) -> WatchConfig:
    return WatchConfig(**resolved.values)


def worker_args(config: ServeConfig) -> list[str]:
    """Flags that give a worker process exactly `config`. The worker reads nothing else
    (no environment, no file), so every worker runs the supervisor's configuration."""
    fields = attrs.fields_dict(ServeConfig)
    args: list[str] = []
    for option in SERVE_OPTIONS:
        if option.name in fields:
            value = getattr(config, option.name)
            if value is not None:
                args += option.kind.to_args(option.flag, value)
    return args


def markdown_table(options: Iterable[Option]) -> str:
    """The README's table of `options` (tests/unit/test_settings.py keeps them equal)."""
    rows = [
        "| flag | environment variable | config file key | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for option in options:
        env = " or ".join(f"`{name}`" for name in (option.env, *option.env_aliases))
        default = option.shown_default()
        if option.default_text is None:
            default = f"`{default}`"
        rows.append(f"| `{option.flag}` | {env} | `{option.name}` | {default} | {option.help} |")
    return "\n".join(rows) + "\n"
