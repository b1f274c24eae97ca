"""`serve --workers N`: N processes, each a complete pipeline, sharing one port.

The process the operator starts becomes a supervisor: it checks the port, starts the
workers (`python -m aggtrio serve --internal-worker I/N ...`), restarts any that dies, and
stops them all on SIGINT or SIGTERM. It runs no pipeline itself. Workers listen with
SO_REUSEPORT, and the kernel spreads incoming connections across them.

Workers are fresh interpreters, not forks: forking a process that runs trio is unsafe, and
a worker needs nothing from its parent but its configuration, passed as flags (and only
flags: a worker ignores AGGTRIO_* variables and config files, so all run the same one).

Supervisor and worker talk over two pipes. A worker writes ``ready`` on its stdout once it
listens. Its stdin is a pipe from the supervisor that is never written to: end-of-file
means the supervisor is gone (even SIGKILL closes it), and the worker shuts down rather
than serve on unsupervised.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable

import anyio
import attrs
import trio

from aggtrio.config import ConfigError, ServeConfig
from aggtrio.settings import worker_args

log = logging.getLogger(__name__)

READY = b"ready\n"

# Seconds workers get to end their client streams and exit once told to stop: their own
# 1 s grace for clients, plus cancelling feeds and leaving the interpreter.
STOP_TIMEOUT = 5.0

# What the supervisor sends a worker to stop it, whichever signal it received itself:
# a worker that is still starting up dies of SIGTERM quietly, where SIGINT would print a
# KeyboardInterrupt traceback.
STOP_SIGNAL = signal.SIGTERM


class WorkersFailedError(Exception):
    """A worker kept dying at start; the message is a one-line reason."""


def worker_tag(index: int, count: int) -> str:
    return f"worker {index}/{count}"


def parse_worker_slot(text: str) -> tuple[int, int]:
    """``I/N`` (the hidden ``--internal-worker`` value) as (I, N)."""
    index_text, sep, count_text = text.partition("/")
    try:
        index, count = int(index_text), int(count_text)
    except ValueError:
        index = count = 0
    if not sep or not 1 <= index <= count:
        raise ConfigError(f"worker slot {text!r} is not I/N with 1 <= I <= N")
    return index, count


def check_shareable(config: ServeConfig, count: int) -> None:
    """Refuse port 0: each worker would listen on a different free port. Each worker
    serves its own metrics, on metrics_port + i - 1: those ports must exist and be known."""
    if config.port == 0:
        raise ConfigError(
            f"{count} workers need a fixed port: with port 0 each would listen on a "
            "different free one"
        )
    if config.metrics_port == 0:
        raise ConfigError(
            f"{count} workers need a fixed --metrics-port: worker i serves its metrics "
            "on that port + i - 1"
        )
    if config.metrics_port is not None and config.metrics_port + count - 1 > 65535:
        raise ConfigError(
            f"--metrics-port {config.metrics_port} leaves no room for {count} workers "
            "(worker i serves its metrics on that port + i - 1)"
        )
    # ServeConfig refuses metrics_port == port, which covers worker 1 alone.
    if config.metrics_port is not None and 0 <= config.port - config.metrics_port < count:
        raise ConfigError(
            f"the gRPC port {config.port} is among the {count} workers' metrics ports "
            f"{config.metrics_port}-{config.metrics_port + count - 1}; give --metrics-port "
            "another"
        )


def worker_metrics_port(config: ServeConfig, index: int) -> int | None:
    """Worker `index` (1..N) serves its metrics on metrics_port + index - 1: a scrape of
    one shared port would reach a random worker, and counters would jump between them."""
    return None if config.metrics_port is None else config.metrics_port + index - 1


def worker_command(config: ServeConfig, index: int, count: int) -> list[str]:
    """The command line of worker `index` of `count`: the supervisor's whole configuration
    as flags. A worker reads nothing else, neither AGGTRIO_* variables nor a config file."""
    # Each worker serves its own metrics port (see worker_metrics_port).
    own = attrs.evolve(config, metrics_port=worker_metrics_port(config, index))
    return [
        sys.executable,
        "-m",
        "aggtrio",
        "serve",
        f"--internal-worker={index}/{count}",
        *worker_args(own),
    ]


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


@attrs.frozen
class RestartPolicy:
    """When to restart a worker that died, and when to stop trying.

    The first restart is immediate: a one-off crash should cost its clients as little as
    possible. Each further failure in a row doubles the wait, up to `maximum`. A worker
    that ran for `stable_after` seconds was healthy, so its death starts a new count.
    `give_up_after` failures in a row mean a fault no restart fixes (a configuration only
    a worker can check, a port taken under our feet); retrying forever would hide it and
    hammer the venues, each restart opening new connections (Binance allows 300 attempts
    per 5 minutes per IP).
    """

    initial: float = 0.5
    maximum: float = 10.0
    stable_after: float = 10.0
    give_up_after: int = 5

    def failures_after(self, failures: int, uptime: float) -> int:
        """Failures in a row, counting a death after `uptime` seconds of running."""
        return 1 if uptime >= self.stable_after else failures + 1

    def delay(self, failures: int) -> float | None:
        """Seconds before restarting after `failures` failures in a row; None: give up."""
        if failures >= self.give_up_after:
            return None
        if failures <= 1:
            return 0.0
        return min(self.maximum, self.initial * 2.0 ** min(failures - 2, 64))


async def check_port_free(host: str, port: int) -> None:
    """Bind host:port as a lone server would (no SO_REUSEPORT), then let it go.

    The workers' SO_REUSEPORT lets them join any socket of this user that set it too, a
    second `serve --workers` on the port included: without this check that one would start
    cleanly and take half the clients. Raises OSError when the port is not free.
    """
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    await listener.aclose()


@attrs.define
class Supervisor:
    """Keeps `count` workers serving until SIGINT or SIGTERM; see the module docstring."""

    config: ServeConfig
    count: int
    policy: RestartPolicy = RestartPolicy()
    stop_timeout: float = STOP_TIMEOUT
    command: Callable[[ServeConfig, int, int], list[str]] = worker_command
    # Set once every worker has been serving at the same time.
    all_serving: trio.Event = attrs.field(init=False, factory=trio.Event)
    _stop: trio.Event = attrs.field(init=False, factory=trio.Event)
    _serving: set[int] = attrs.field(init=False, factory=set)
    _unclean_stop: bool = attrs.field(init=False, default=False)
    _gave_up: str | None = attrs.field(init=False, default=None)

    async def run(self) -> int:
        """Serve until told to stop; then 0 if every worker stopped in order, else 1.

        Raises OSError if the port is not free, WorkersFailedError if a worker kept dying.
        """
        await check_port_free(self.config.host, self.config.port)
        # Open for the whole run: a second Ctrl-C must not interrupt the orderly stop.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stop_on_signal, signals)
                async with trio.open_nursery() as slots:
                    for index in range(1, self.count + 1):
                        slots.start_soon(self._keep_running, index)
                nursery.cancel_scope.cancel()
        if self._gave_up is not None:
            raise WorkersFailedError(self._gave_up)
        log.info("all workers stopped")
        return 1 if self._unclean_stop else 0

    def stop(self) -> None:
        """Stop every worker (as SIGINT or SIGTERM does); `run` then returns."""
        self._stop.set()

    async def _stop_on_signal(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if self._stop.is_set():
                log.info("received %s: already stopping", name)
            else:
                log.info("received %s: stopping %d workers", name, self.count)
                self.stop()

    async def _keep_running(self, index: int) -> None:
        tag = worker_tag(index, self.count)
        failures = 0
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            started = trio.current_time()
            try:
                pid, returncode = await self._run_once(index, restarted=attempt > 1)
            except OSError as exc:  # no process at all (out of memory or processes, say)
                who, reason = tag, f"could not be started ({exc})"
            else:
                who, reason = f"{tag} (pid {pid})", describe_exit(returncode)
                if self._stop.is_set():
                    if returncode not in (0, -STOP_SIGNAL):
                        log.warning("%s %s while stopping", who, reason)
                        self._unclean_stop = True
                    return
            failures = self.policy.failures_after(failures, trio.current_time() - started)
            delay = self.policy.delay(failures)
            if delay is None:
                self._gave_up = (
                    f"{tag} failed {failures} times in a row, each within "
                    f"{self.policy.stable_after:g} s of starting (last: {reason}); giving up"
                )
                self.stop()
                return
            log.warning(
                "%s %s; restarting it %s", who, reason, "now" if delay == 0 else f"in {delay:g} s"
            )
            with trio.move_on_after(delay):
                await self._stop.wait()

    async def _run_once(self, index: int, *, restarted: bool) -> tuple[int, int]:
        """Run one worker process until it exits (stopping it when told to): (pid, status)."""
        process = await trio.lowlevel.open_process(
            self.command(self.config, index, self.count),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # Its own process group: Ctrl-C in a terminal signals the whole foreground
            # group, and the supervisor alone should decide how workers stop.
            process_group=0,
        )
        log.info("%s started (pid %d)", worker_tag(index, self.count), process.pid)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._report_when_serving, index, process, restarted)
                nursery.start_soon(self._stop_when_told, index, process)
                await process.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._serving.discard(index)
            with trio.CancelScope(shield=True):
                if process.returncode is None:  # only if the supervisor itself is failing
                    process.kill()
                    await process.wait()
                for pipe in (process.stdin, process.stdout):
                    if pipe is not None:
                        await pipe.aclose()
        assert process.returncode is not None
        return process.pid, process.returncode

    async def _stop_when_told(self, index: int, process: trio.Process) -> None:
        await self._stop.wait()
        process.send_signal(STOP_SIGNAL)
        await trio.sleep(self.stop_timeout)
        log.warning(
            "%s (pid %d) did not stop within %g s: killing it",
            worker_tag(index, self.count),
            process.pid,
            self.stop_timeout,
        )
        self._unclean_stop = True
        process.kill()

    async def _report_when_serving(
        self, index: int, process: trio.Process, restarted: bool
    ) -> None:
        assert process.stdout is not None
        received = b""
        while READY not in received:
            chunk = await process.stdout.receive_some()
            if not chunk:
                return  # it exited before listening; _keep_running reports that
            received += chunk
        self._serving.add(index)
        if restarted:
            log.info("%s (pid %d) serving again", worker_tag(index, self.count), process.pid)
        if len(self._serving) == self.count and not self.all_serving.is_set():
            self.all_serving.set()
            log.info(
                "all %d workers serving on %s:%d", self.count, self.config.host, self.config.port
            )


# --- the worker's side ----------------------------------------------------------------------


def report_ready() -> None:
    """Tell the supervisor this worker is listening."""
    # If the supervisor is gone, stop_when_supervisor_gone ends this worker.
    with contextlib.suppress(OSError):
        os.write(sys.stdout.fileno(), READY)


async def stop_when_supervisor_gone() -> None:
    """Send this process SIGTERM when its stdin, the supervisor's pipe, reaches end-of-file."""
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        while await stdin.receive_some():
            pass
    log.warning("the supervisor is gone: shutting down")
    # The ordinary shutdown path, the one the supervisor's own SIGTERM takes.
    signal.raise_signal(signal.SIGTERM)
