"""The benchmark's child processes, seen from the controller.

Every child runs in its own process group (so Ctrl-C in the terminal reaches only the
controller, and nothing a child starts outlives it) and is killed when the `Processes` block
that started it ends, however it ends: normally, on an error or on Ctrl-C. Children written
for the benchmark speak JSON lines: commands on their standard input, one reply (an
``event``) per line on their standard output; they exit when their standard input closes,
so they also end if the controller itself is killed. (PR_SET_PDEATHSIG cannot do that for
``aggtrio serve``: trio starts processes from a worker thread, whose exit would fire it.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import trio

import aggtrio

T = TypeVar("T")

# The directory holding the `aggtrio` package this process runs: children must import the
# same code (an editable install elsewhere could otherwise win).
_PACKAGE_ROOT = str(Path(aggtrio.__file__).resolve().parents[1])
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# How long a server gets to accept connections after it was started.
SERVER_READY_TIMEOUT = 20.0


class BenchError(Exception):
    """The benchmark cannot go on; the message is one line saying why."""


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _PACKAGE_ROOT + (os.pathsep + path if path else "")
    return env


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for `aggtrio serve`, which cannot report one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Child:
    """One child process: its replies, its log, its CPU time and memory."""

    def __init__(self, name: str, process: trio.Process, log_path: Path) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path
        self._replies_send, self._replies = trio.open_memory_channel[dict[str, Any]](100)

    @property
    def pid(self) -> int:
        return self.process.pid

    def last_log_line(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def _failure(self, what: str) -> BenchError:
        last = self.last_log_line()
        detail = f": {last}" if last else ""
        return BenchError(f"{self.name} {what} (log {self.log_path}){detail}")

    async def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        try:
            await self.process.stdin.send_all(json.dumps(command).encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._failure("exited") from None

    async def reply(self, within: float) -> dict[str, Any]:
        """The child's next reply; a reply with event "error" raises BenchError."""
        with trio.move_on_after(within):
            try:
                reply = await self._replies.receive()
            except trio.EndOfChannel:
                raise self._failure("exited") from None
            if reply.get("event") == "error":
                raise BenchError(f"{self.name}: {reply.get('message')}")
            return reply
        raise self._failure(f"did not answer within {within:g} s")

    async def request(self, command: dict[str, Any], within: float) -> dict[str, Any]:
        await self.send(command)
        return await self.reply(within)

    async def _read_replies(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async with self._replies_send:
            async for chunk in self.process.stdout:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    await self._replies_send.send(json.loads(line))

    def kill(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the process and its descendants alive now."""
        return sum(_cpu_ticks(pid) for pid in _tree(self.pid)) / _CLOCK_TICKS

    def rss_kib(self) -> int:
        """Resident memory of the process and its descendants, in KiB."""
        return sum(_rss_kib(pid) for pid in _tree(self.pid))


class Processes:
    """Starts children; `processes()` kills every one of them on the way out."""

    def __init__(self, nursery: trio.Nursery, log_dir: Path) -> None:
        self._nursery = nursery
        self._log_dir = log_dir
        self._children: list[Child] = []

    async def start(self, name: str, args: Sequence[str]) -> Child:
        """Start `python ARGS` with the same aggtrio importable; stderr goes to a log file."""
        log_path = self._log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            process = await trio.lowlevel.open_process(
                [sys.executable, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=child_env(),
                start_new_session=True,
            )
        child = Child(name, process, log_path)
        self._children.append(child)
        self._nursery.start_soon(child._read_replies)
        return child

    async def start_bench_child(
        self, name: str, module: str, args: Sequence[str], ready_timeout: float = 30.0
    ) -> tuple[Child, dict[str, Any]]:
        """Start `python -m aggtrio.bench.MODULE ARGS`; wait for its "ready" reply."""
        child = await self.start(name, ["-m", f"aggtrio.bench.{module}", *args])
        ready = await child.reply(ready_timeout)
        if ready.get("event") != "ready":
            raise BenchError(f"{name}: expected ready, got {ready}")
        return child, ready

    async def start_server(self, name: str, args: Sequence[str]) -> tuple[Child, int]:
        """Start `aggtrio serve ARGS` on a free port; return once it accepts connections."""
        port = free_port()
        child = await self.start(
            name, ["-m", "aggtrio", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
        )
        with trio.move_on_after(SERVER_READY_TIMEOUT):
            while child.process.poll() is None:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                return child, port
            raise child._failure(f"exited with status {child.process.returncode}")
        raise child._failure(f"did not accept connections within {SERVER_READY_TIMEOUT:g} s")

    async def stop(self, child: Child) -> None:
        child.kill()
        with trio.CancelScope(shield=True):
            await child.process.wait()
        self._children.remove(child)

    def kill_all(self) -> None:
        for child in self._children:
            child.kill()


@asynccontextmanager
async def processes(log_dir: Path) -> AsyncIterator[Processes]:
    async with trio.open_nursery() as nursery:
        procs = Processes(nursery, log_dir)
        try:
            yield procs
        finally:
            procs.kill_all()
            with trio.CancelScope(shield=True):
                for child in procs._children:
                    await child.process.wait()
            nursery.cancel_scope.cancel()


async def gather(calls: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run the calls concurrently; their results in order (the first error cancels the rest)."""
    pending = list(calls)
    results: dict[int, T] = {}

    async def run(index: int, call: Callable[[], Awaitable[T]]) -> None:
        results[index] = await call()

    try:
        async with trio.open_nursery() as nursery:
            for index, call in enumerate(pending):
                nursery.start_soon(run, index, call)
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    return [results[index] for index in range(len(pending))]


def first_error(exc: BaseException) -> BaseException:
    """The error to report from a (nested) exception group: a BenchError if there is one,
    else the first error; the group itself if it holds anything but errors (Ctrl-C)."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if isinstance(current, BaseExceptionGroup):
            todo[:0] = current.exceptions
        else:
            leaves.append(current)
    if not all(isinstance(leaf, Exception) for leaf in leaves):
        return exc
    return next((leaf for leaf in leaves if isinstance(leaf, BenchError)), leaves[0])


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat: all but idle, iowait)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _CLOCK_TICKS


def _tree(pid: int) -> list[int]:
    """`pid` and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat_fields(int(entry.name))
            if stat:
                children.setdefault(int(stat[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat from the state field on (the command name may hold spaces)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text[text.rindex(")") + 2 :].split()


def _cpu_ticks(pid: int) -> int:
    fields = _stat_fields(pid)
    # utime and stime are fields 14 and 15 of stat; here the list starts at field 3.
    return int(fields[11]) + int(fields[12]) if fields else 0


def _rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
