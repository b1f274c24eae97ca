"""`aggtrio serve --workers N` in real processes, seen through real grpcio clients."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
import trio

from aggtrio.config import ServeConfig
from aggtrio.simulator import SimulatedVenue
from aggtrio.workers import RestartPolicy, Supervisor, WorkersFailedError

from .harness import ROOT, ServerProcess, start_server, venue_url_args
from .test_service import is_pinned, pin

ALL_SERVING = re.compile(r"\[supervisor\] aggtrio\.workers: all 2 workers serving on 127\.0\.0\.1:")
STREAM_OPENED = re.compile(r"\[(worker \d/2)\] aggtrio\.server: stream opened")
# Each channel its own TCP connection (grpcio would otherwise share one per target): the
# kernel spreads connections, not streams, across the workers.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
CLIENTS = 20  # all of them on one of two workers: a chance of 2 in 2**20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def two_workers(
    nursery: trio.Nursery,
    sims: dict[str, SimulatedVenue],
    *,
    stop_and_check: bool = True,
    extra_args: Sequence[str] = (),
) -> AsyncIterator[ServerProcess]:
    """`serve --workers 2` against the simulators, once the supervisor says all serve;
    afterwards, like `running_server`, it must stop in order (unless the test stopped it
    some other way), and is killed if the test failed."""
    # The harness passes --port 0 first; workers need a real port, and the last flag wins.
    # DEBUG: the tests follow each stream's "stream opened" and "stream closed" lines.
    args = ["--workers", "2", "--port", str(free_port()), "--log-level", "DEBUG"]
    args += [*venue_url_args(sims), *extra_args]
    server = await start_server(nursery, args)
    try:
        with trio.fail_after(10):
            await server.wait_for_line(ALL_SERVING)
        yield server
        if stop_and_check:
            await server.stop_and_check()
    finally:
        if server.process.returncode is None:
            # Its workers see their stdin close and leave (test_workers_leave_...).
            server.process.kill()
            with trio.CancelScope(shield=True):
                await server.process.wait()


async def worker_pid(server: ServerProcess, index: int, start: int = 0) -> tuple[int, int]:
    """The pid of the first worker `index` started from log line `start` on, and its line."""
    line, match = await server.wait_for_line(rf"worker {index}/2 started \(pid (\d+)\)", start)
    return int(match.group(1)), line


async def exited(pid: int) -> None:
    """Wait until process `pid` (not necessarily our child) has exited."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(pidfd)  # readable once it has exited
    finally:
        os.close(pidfd)


def running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def read_pinned(pb2: Any, pb2_grpc: Any, port: int, client: int) -> Any:
    """On a connection of its own: the first pinned summary, by either RPC (by `client`)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as channel:
        stub = pb2_grpc.OrderbookAggregatorStub(channel)
        if client % 2:
            call = stub.BookSummaryForSymbol(pb2.SummaryRequest(symbol="eth/btc"), timeout=15)
        else:
            call = stub.BookSummary(pb2.Empty(), timeout=15)
        for summary in call:
            if is_pinned(summary):
                call.cancel()
                return summary
    raise AssertionError(f"client {client}: stream ended before the pinned book arrived")


async def many_clients_read_pinned(
    server: ServerProcess, grpcio_modules: tuple[ModuleType, ModuleType]
) -> list[Any]:
    summaries: list[Any] = []

    async def client(index: int) -> None:
        summaries.append(
            await trio.to_thread.run_sync(read_pinned, *grpcio_modules, server.port, index)
        )

    async with trio.open_nursery() as nursery:
        for index in range(CLIENTS):
            nursery.start_soon(client, index)
    return summaries


async def streams_per_worker(server: ServerProcess, start: int, total: int) -> Counter[str]:
    """Which worker logged each of the next `total` "stream opened" lines from `start` on."""
    seen: Counter[str] = Counter()
    index = start
    with trio.fail_after(5):
        while seen.total() < total:
            index, match = await server.wait_for_line(STREAM_OPENED, index)
            seen[match.group(1)] += 1
            index += 1
    return seen


async def test_two_workers_serve_both_rpcs_and_share_the_connections(
    nursery: trio.Nursery,
    simulators: dict[str, SimulatedVenue],
    grpcio_modules: tuple[ModuleType, ModuleType],
) -> None:
    async with two_workers(nursery, simulators) as server:
        pids = {(await worker_pid(server, index))[0] for index in (1, 2)}
        assert len(pids) == 2
        pin(simulators)
        summaries = await many_clients_read_pinned(server, grpcio_modules)
        assert len(summaries) == CLIENTS
        assert all(is_pinned(summary) for summary in summaries)
        # Each worker is a complete pipeline: both merged the book and served streams.
        seen = await streams_per_worker(server, 0, CLIENTS)
        assert seen.total() == CLIENTS
        assert seen["worker 1/2"] > 0, seen
        assert seen["worker 2/2"] > 0, seen
        # ...with its own connection to every venue: the price of --workers.
        for sim in simulators.values():
            assert sim.connections == 2


async def test_a_killed_worker_is_restarted_and_the_service_keeps_serving(
    nursery: trio.Nursery,
    simulators: dict[str, SimulatedVenue],
    grpcio_modules: tuple[ModuleType, ModuleType],
) -> None:
    async with two_workers(nursery, simulators) as server:
        pin(simulators)
        pid, _ = await worker_pid(server, 1)
        os.kill(pid, signal.SIGKILL)
        with trio.fail_after(5):
            died, _ = await server.wait_for_line(
                rf"WARNING \[supervisor\] aggtrio\.workers: worker 1/2 \(pid {pid}\) was killed "
                "by SIGKILL; restarting it now"
            )
        # Serving throughout: new connections go to the listeners that are left (worker 2,
        # or already the new worker 1).
        await trio.to_thread.run_sync(read_pinned, *grpcio_modules, server.port, 0)
        new_pid, restarted = await worker_pid(server, 1, died)
        assert new_pid != pid
        with trio.fail_after(10):
            back, _ = await server.wait_for_line(
                rf"worker 1/2 \(pid {new_pid}\) serving again", restarted
            )
        # The new worker 1 takes its share of new connections again.
        await many_clients_read_pinned(server, grpcio_modules)
        seen = await streams_per_worker(server, back, CLIENTS)
        assert seen["worker 1/2"] > 0, seen
        assert seen["worker 2/2"] > 0, seen
        assert not running(pid)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_stops_every_worker_in_order_and_the_supervisor_exits_0(
    nursery: trio.Nursery,
    simulators: dict[str, SimulatedVenue],
    grpcio_modules: tuple[ModuleType, ModuleType],
    signum: signal.Signals,
) -> None:
    pb2, pb2_grpc = grpcio_modules
    token = trio.lowlevel.current_trio_token()
    async with two_workers(nursery, simulators) as server:
        pids = [(await worker_pid(server, index))[0] for index in (1, 2)]
        streaming = trio.Semaphore(0)

        def stream_until_end() -> grpc.RpcError | None:
            with grpc.insecure_channel(
                f"127.0.0.1:{server.port}", options=OWN_CONNECTION
            ) as channel:
                stub = pb2_grpc.OrderbookAggregatorStub(channel)
                call = stub.BookSummary(pb2.Empty(), timeout=30)
                try:
                    next(call)
                    trio.from_thread.run_sync(streaming.release, trio_token=token)
                    for _ in call:
                        pass
                except grpc.RpcError as exc:
                    return exc
            return None

        errors: list[grpc.RpcError | None] = []

        async def client() -> None:
            errors.append(await trio.to_thread.run_sync(stream_until_end))

        async with trio.open_nursery() as clients:
            for _ in range(CLIENTS):
                clients.start_soon(client)
            with trio.fail_after(10):
                for _ in range(CLIENTS):
                    await streaming.acquire()
            seen = await streams_per_worker(server, 0, CLIENTS)
            assert seen["worker 1/2"] > 0, seen
            assert seen["worker 2/2"] > 0, seen
            sent_at = trio.current_time()
            server.process.send_signal(signum)
            with trio.fail_after(5):
                await server.process.wait()
            assert trio.current_time() - sent_at < 3.0
        assert server.process.returncode == 0, "\n".join(server.log)
        assert len(errors) == CLIENTS
        for error in errors:
            assert error is not None
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        # Each worker took its orderly path (not killed): told to stop, it ended every
        # one of its streams itself.
        for index in (1, 2):
            await server.wait_for_line(rf"\[worker {index}/2\] aggtrio: received SIGTERM")
        closed = Counter(
            match.group(1)
            for line in server.log
            if (match := re.search(r"\[(worker \d/2)\] aggtrio\.server: stream closed", line))
        )
        assert closed == seen
        assert not any("did not stop" in line for line in server.log)
        assert not any("supervisor is gone" in line for line in server.log)
        # The supervisor waited for its workers: none is left behind.
        assert not any(running(pid) for pid in pids)
        with trio.fail_after(1):
            await server.wait_for_log_end()


async def test_workers_leave_when_their_supervisor_is_killed(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue]
) -> None:
    async with two_workers(nursery, simulators, stop_and_check=False) as server:
        pids = [(await worker_pid(server, index))[0] for index in (1, 2)]
        server.process.kill()  # no chance to stop its workers
        await server.process.wait()
        with trio.fail_after(5):
            for index in (1, 2):
                await server.wait_for_line(rf"\[worker {index}/2\] .*the supervisor is gone")
                await server.wait_for_line(rf"\[worker {index}/2\] aggtrio: received SIGTERM")
            for pid in pids:
                await exited(pid)
            await server.wait_for_log_end()


# --- refusing to start ------------------------------------------------------------------------


async def run_serve(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(15):
        return await trio.run_process(
            [sys.executable, "-m", "aggtrio", "serve", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=ROOT,
        )


async def test_workers_on_a_port_that_is_taken_fail_loudly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await run_serve("--workers", "2", "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [
        f"aggtrio serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert result.stdout == b""


async def test_a_second_group_of_workers_cannot_join_the_first(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue]
) -> None:
    # The first group's sockets allow SO_REUSEPORT: only the supervisor's check stops a
    # second group from quietly taking half the clients.
    async with two_workers(nursery, simulators) as server:
        result = await run_serve("--workers", "2", "--port", str(server.port))
        assert result.returncode == 1
        assert result.stderr.decode().splitlines() == [
            f"aggtrio serve: error: cannot listen on 127.0.0.1:{server.port}: "
            "Address already in use"
        ]
        # And a lone server cannot either.
        result = await run_serve("--port", str(server.port))
        assert result.returncode == 1


# --- the supervisor with stand-in workers -----------------------------------------------------

FAILS_AT_ONCE = "import sys; sys.exit(3)"
SERVES_UNTIL_SIGNALLED = "import os, time; os.write(1, b'ready\\n'); time.sleep(60)"
IGNORES_SIGTERM = (
    "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "os.write(1, b'ready\\n'); time.sleep(60)"
)


def stand_ins(*programs: str) -> Callable[[ServeConfig, int, int], list[str]]:
    """A worker command under which worker I runs the I-th of `programs`."""

    def command(config: ServeConfig, index: int, count: int) -> list[str]:
        return [sys.executable, "-c", programs[index - 1]]

    return command


async def test_a_worker_that_keeps_failing_at_start_makes_the_supervisor_give_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "aggtrio.workers")
    supervisor = Supervisor(
        ServeConfig(port=free_port()),
        2,
        policy=RestartPolicy(initial=0.05, maximum=0.1, give_up_after=4),
        command=stand_ins(FAILS_AT_ONCE, SERVES_UNTIL_SIGNALLED),
    )
    with trio.fail_after(10), pytest.raises(WorkersFailedError) as info:
        await supervisor.run()
    message = str(info.value)
    assert "worker 1/2 failed 4 times in a row" in message
    assert "exited with status 3" in message
    assert "\n" not in message
    # Three restarts (at once, then waiting longer each time), and no fourth.
    started = pids_of(caplog, 1)
    assert len(started) == 4
    restarts = [r.getMessage() for r in caplog.records if "restarting it" in r.getMessage()]
    assert restarts == [
        f"worker 1/2 (pid {pid}) exited with status 3; restarting it {when}"
        for pid, when in zip(started[:3], ["now", "in 0.05 s", "in 0.1 s"], strict=True)
    ]
    # The healthy worker was stopped, not left serving alone.
    assert all(not running(pid) for pid in pids_of(caplog, 2))


async def test_a_worker_that_cannot_even_be_started_is_given_up_on(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, "aggtrio.workers")
    supervisor = Supervisor(
        ServeConfig(port=free_port()),
        2,
        policy=RestartPolicy(initial=0.01, maximum=0.01, give_up_after=2),
        command=lambda config, index, count: [str(tmp_path / "no-such-python")],
    )
    with trio.fail_after(10), pytest.raises(WorkersFailedError, match="could not be started"):
        await supervisor.run()
    assert any(
        re.fullmatch(r"worker \d/2 could not be started \(.*\); restarting it now", r.getMessage())
        for r in caplog.records
    )


def pids_of(caplog: pytest.LogCaptureFixture, index: int) -> list[int]:
    return [
        int(match.group(1))
        for record in caplog.records
        if (match := re.fullmatch(rf"worker {index}/2 started \(pid (\d+)\)", record.getMessage()))
    ]


async def test_a_worker_that_ignores_the_stop_is_killed_after_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "aggtrio.workers")
    supervisor = Supervisor(
        ServeConfig(port=free_port()),
        2,
        stop_timeout=0.5,
        command=stand_ins(SERVES_UNTIL_SIGNALLED, IGNORES_SIGTERM),
    )
    statuses: list[int] = []

    async def run() -> None:
        statuses.append(await supervisor.run())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        with trio.fail_after(10):
            await supervisor.all_serving.wait()
        stopped_at = trio.current_time()
        supervisor.stop()
    assert 0.5 <= trio.current_time() - stopped_at < 2.0
    assert statuses == [1]  # not an orderly stop
    messages = [record.getMessage() for record in caplog.records]
    assert any(
        re.fullmatch(r"worker 2/2 \(pid \d+\) did not stop within 0.5 s: killing it", m)
        for m in messages
    )
    assert not any("worker 1/2" in m and "killing" in m for m in messages)
