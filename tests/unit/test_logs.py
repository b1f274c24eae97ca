"""Log lines as operators and log shippers read them."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterator

import orjson
import pytest

from aggtrio.logs import LIBRARY_LOGGERS, configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def test_json_is_one_object_per_line_with_the_documented_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", "json")
    logging.getLogger("aggtrio.feed").info("binance: %s [%d]", "live", 3)
    logging.getLogger("aggtrio.feed").debug("not shown at INFO")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    record = orjson.loads(lines[0])
    assert set(record) == {"ts", "level", "logger", "message"}
    assert record["level"] == "INFO"
    assert record["logger"] == "aggtrio.feed"
    assert record["message"] == "binance: live [3]"
    when = datetime.datetime.fromisoformat(record["ts"])
    assert record["ts"].endswith("Z")
    now = datetime.datetime.now(datetime.UTC)
    assert abs((now - when).total_seconds()) < 60


def test_json_keeps_an_exception_and_its_traceback_on_the_same_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", "json", tag="worker 2/4")
    try:
        raise RuntimeError('boom "quoted"\nsecond line')
    except RuntimeError:
        logging.getLogger("aggtrio.server").exception("internal error in %s", "x/y")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    record = orjson.loads(lines[0])
    assert record["message"] == "internal error in x/y"
    assert record["level"] == "ERROR"
    assert record["process"] == "worker 2/4"
    assert record["exception"].startswith("Traceback (most recent call last):")
    assert 'RuntimeError: boom "quoted"\nsecond line' in record["exception"]


def test_text_is_human_readable_with_the_process_tag(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("WARNING", "text", tag="supervisor")
    logging.getLogger("aggtrio.workers").warning("worker 1/2 exited with status %d", 3)
    logging.getLogger("aggtrio.workers").info("not shown at WARNING")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(" WARNING [supervisor] aggtrio.workers: worker 1/2 exited with status 3")


def test_libraries_stay_at_warning_when_ours_are_at_debug(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("DEBUG", "text")
    logging.getLogger("hpack.hpack").debug("Encoding header %r", b"content-type")
    logging.getLogger("trio-websocket").debug("frame received")
    logging.getLogger("purerpc.server").warning("Got exception in main dispatch loop")
    logging.getLogger("aggtrio.server").debug("stream opened: ETHBTC, 1 open")
    err = capsys.readouterr().err
    assert "Encoding header" not in err
    assert "frame received" not in err
    assert "main dispatch loop" in err
    assert "stream opened" in err


def test_configuring_twice_leaves_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "text")
    configure_logging("INFO", "json")
    logging.getLogger("aggtrio").info("once")
    (line,) = capsys.readouterr().err.splitlines()
    assert orjson.loads(line)["message"] == "once"


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="xml"):
        configure_logging("INFO", "xml")


def test_json_keeps_a_requested_stack_on_the_same_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    logging.getLogger("aggtrio").info("where am I", stack_info=True)
    (line,) = capsys.readouterr().err.splitlines()
    record = orjson.loads(line)
    assert record["stack"].startswith("Stack (most recent call last):")
    assert "test_json_keeps_a_requested_stack_on_the_same_line" in record["stack"]
