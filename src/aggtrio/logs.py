"""Log output: one line per event on stderr, as text for people or JSON for log shippers."""

from __future__ import annotations

import datetime
import logging
import sys

import orjson

LOG_FORMATS = ("text", "json")

# Loggers of the libraries under us. At DEBUG they describe every frame and header (hpack
# logs each one it encodes), which would bury our own DEBUG lines; their WARNINGs still show.
LIBRARY_LOGGERS = ("trio-websocket", "purerpc", "hpack", "h2", "anyio")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message; process (the tag), exception
    and stack when there are any."""

    def __init__(self, tag: str | None = None) -> None:
        super().__init__()
        self._tag = tag

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        line: dict[str, str] = {
            "ts": when.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._tag is not None:
            line["process"] = self._tag
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line).decode()


def text_formatter(tag: str | None = None) -> logging.Formatter:
    where = f"[{tag}] " if tag else ""
    return logging.Formatter(f"%(asctime)s %(levelname)-7s {where}%(name)s: %(message)s")


def configure_logging(level: str, log_format: str = "text", tag: str | None = None) -> None:
    """Send every log record to stderr in `log_format` ("text" or "json").

    `tag` (e.g. "worker 1/2") marks every line of a process that shares its stderr with
    others: in text it prefixes the logger name, in JSON it is the "process" field.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(tag) if log_format == "json" else text_formatter(tag))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
