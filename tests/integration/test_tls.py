"""`serve --tls-cert/--tls-key` with a self-signed CA (trustme): grpcio's secure channel and
`watch --tls --ca` stream from it, and clients that fail the handshake cost nothing but a
count and a quiet log line."""

from __future__ import annotations

import contextlib
import io
import json
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import attrs
import grpc
import pytest
import trio
import trustme

from aggtrio.simulator import SimulatedVenue
from aggtrio.tls import client_context
from aggtrio.watch import run_watch

from .harness import ServerProcess, running_server, venue_url_args
from .test_observability import METRICS_LINE, scrape_until, value


@attrs.frozen
class Certificates:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    paths = Certificates(tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    ca.cert_pem.write_to_path(str(paths.ca))
    issued.private_key_pem.write_to_path(str(paths.key))
    issued.cert_chain_pems[0].write_to_path(str(paths.cert))
    return paths


@pytest.fixture
async def tls_server(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue], certificates: Certificates
) -> AsyncIterator[tuple[ServerProcess, int]]:
    """A TLS server with metrics: (server, metrics port)."""
    args = [
        "--tls-cert",
        str(certificates.cert),
        "--tls-key",
        str(certificates.key),
        "--metrics-port",
        "0",
        *venue_url_args(simulators),
    ]
    async with running_server(nursery, args) as server:
        _, match = await server.wait_for_line(METRICS_LINE)
        yield server, int(match.group(1))


async def test_grpcio_secure_channel_streams_over_tls(
    tls_server: tuple[ServerProcess, int],
    certificates: Certificates,
    grpcio_modules: tuple[ModuleType, ModuleType],
) -> None:
    server, _ = tls_server
    pb2, pb2_grpc = grpcio_modules
    credentials = grpc.ssl_channel_credentials(root_certificates=certificates.ca.read_bytes())

    def first_live_summary(target: str) -> list[str]:
        with grpc.secure_channel(target, credentials) as channel:
            call = pb2_grpc.OrderbookAggregatorStub(channel).BookSummary(pb2.Empty(), timeout=15)
            for summary in call:
                if summary.live_exchanges:
                    call.cancel()
                    return list(summary.live_exchanges)
        raise AssertionError("stream ended without a summary")

    # By name and by address: the certificate carries both.
    for host in ("localhost", "127.0.0.1"):
        live = await trio.to_thread.run_sync(first_live_summary, f"{host}:{server.port}")
        assert set(live) <= {"binance", "bitstamp"}
        assert live


async def test_watch_tls_with_ca_streams_json(
    tls_server: tuple[ServerProcess, int], certificates: Certificates
) -> None:
    server, _ = tls_server
    out, err = io.StringIO(), io.StringIO()
    code = await run_watch(
        f"localhost:{server.port}",
        "ETHBTC",
        json_lines=True,
        count=2,
        out=out,
        err=err,
        ssl_context=client_context(certificates.ca),
    )
    assert (code, err.getvalue()) == (0, "")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    assert all(line["symbol"] == "ETHBTC" for line in lines)


async def test_the_watch_command_with_tls_and_ca(
    tls_server: tuple[ServerProcess, int], certificates: Certificates
) -> None:
    server, _ = tls_server
    command = [sys.executable, "-m", "aggtrio", "watch", "--server", f"localhost:{server.port}"]
    with trio.fail_after(30):
        trusted = await trio.run_process(
            [*command, "--tls", "--ca", str(certificates.ca), "--json", "--count", "1"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        # Without --tls, the TLS port is a protocol error, said in one line.
        plain = await trio.run_process(
            [*command, "--json", "--count", "1"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert (trusted.returncode, trusted.stderr) == (0, b"")
    assert json.loads(trusted.stdout)["symbol"] is None  # the server's default symbol
    assert plain.returncode == 1
    assert plain.stderr.decode().startswith("aggtrio watch: ")
    assert "add --tls" in plain.stderr.decode()
    assert len(plain.stderr.splitlines()) == 1


async def test_failed_handshakes_are_counted_and_the_server_keeps_serving(
    tls_server: tuple[ServerProcess, int], certificates: Certificates
) -> None:
    server, metrics_port = tls_server
    # A client that does not trust the certificate (the system's roots only)...
    err = io.StringIO()
    code = await run_watch(
        f"localhost:{server.port}", None, count=1, err=err, ssl_context=client_context(None)
    )
    assert code == 1
    assert "TLS handshake failed" in err.getvalue()
    assert "certificate" in err.getvalue()
    # ...a plaintext client...
    err = io.StringIO()
    assert await run_watch(f"127.0.0.1:{server.port}", None, count=1, err=err) == 1
    assert "if it serves TLS, add --tls" in err.getvalue()
    # ...and a port scanner that sends garbage.
    garbage = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with garbage:
        await garbage.send_all(b"GET / HTTP/1.0\r\n\r\n")
        # The server hangs up, or resets the connection: as good.
        with trio.fail_after(5), contextlib.suppress(trio.BrokenResourceError):
            assert await garbage.receive_some() == b""

    await scrape_until(
        metrics_port, lambda s: value(s, "aggtrio_tls_handshake_failures_total") >= 3
    )
    # Still serving a client that trusts it.
    out = io.StringIO()
    code = await run_watch(
        f"localhost:{server.port}",
        None,
        json_lines=True,
        count=1,
        out=out,
        ssl_context=client_context(certificates.ca),
    )
    assert code == 0
    # Quiet: at most INFO, and one line for the burst, never a traceback.
    failures = [line for line in server.log if "TLS handshake failed" in line]
    assert len(failures) == 1
    assert " INFO " in failures[0]
    assert server.problems() == []


async def test_watch_tls_against_a_plaintext_server_says_so(
    server: ServerProcess, certificates: Certificates
) -> None:
    err = io.StringIO()
    code = await run_watch(
        f"localhost:{server.port}", None, count=1, err=err, ssl_context=client_context(None)
    )
    assert code == 1
    assert "does not speak TLS on this port" in err.getvalue()


def test_a_server_context_offers_h2_and_nothing_older_than_tls_1_2(
    certificates: Certificates,
) -> None:
    from aggtrio.tls import server_context

    context = server_context(certificates.cert, certificates.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    # A client offering h2 gets h2 (grpcio refuses a server that does not select it).
    client = _End(client_context(certificates.ca), server_side=False)
    server = _End(context, server_side=True)
    for _ in range(10):
        done = [client.step(), server.step()]
        client.send_to(server)
        server.send_to(client)
        if all(done):
            break
    else:
        raise AssertionError("the handshake did not finish")
    assert client.tls.selected_alpn_protocol() == "h2"
    assert server.tls.version() in ("TLSv1.2", "TLSv1.3")


class _End:
    """One end of a TLS connection over memory buffers."""

    def __init__(self, context: ssl.SSLContext, *, server_side: bool) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(
            self.incoming,
            self.outgoing,
            server_side=server_side,
            server_hostname=None if server_side else "localhost",
        )

    def step(self) -> bool:
        """Advance the handshake; True once it is complete on this end."""
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    def send_to(self, other: _End) -> None:
        other.incoming.write(self.outgoing.read())
