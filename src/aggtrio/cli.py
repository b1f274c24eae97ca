"""Command line: ``aggtrio serve | watch | demo | simulate | bench``.

Each serve and watch flag can also come from an ``AGGTRIO_*`` environment variable or a TOML
config file (settings.py). A bad value prints one line, ``aggtrio <command>: error:
<reason>``, and exits with status 2.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import random
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

import attrs
import trio

from aggtrio import __version__, settings
from aggtrio.config import (
    ConfigError,
    ServeConfig,
    parse_log_level,
    parse_port,
    parse_seconds,
    parse_symbols,
)
from aggtrio.exception_groups import single_leaf
from aggtrio.logs import configure_logging
from aggtrio.workers import (
    Supervisor,
    WorkersFailedError,
    check_shareable,
    parse_worker_slot,
    report_ready,
    stop_when_supervisor_gone,
    worker_tag,
)

log = logging.getLogger("aggtrio")

# How long clients get to receive their UNAVAILABLE status before the process exits.
SHUTDOWN_GRACE = 1.0


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _resolve(section: str, args: argparse.Namespace) -> settings.Resolved:
    """The command's effective settings: flags, then AGGTRIO_* variables, then the config
    file, then defaults. A worker of `serve --workers` takes its flags alone: its
    supervisor passed it the whole configuration, and must not be second-guessed by an
    environment or a file that changed since."""
    if getattr(args, "internal_worker", None) is not None:
        return settings.resolve(section, args, {}, None)
    settings.check_environment(os.environ)
    config_file = settings.load_config_file(args.config, os.environ)
    return settings.resolve(section, args, os.environ, config_file)


def serve_config_from_args(args: argparse.Namespace) -> ServeConfig:
    return settings.serve_config(_resolve("serve", args))


def workers_from_args(args: argparse.Namespace) -> int:
    """How many serving processes `serve` runs (1: this process alone, no supervisor)."""
    workers: int = _resolve("serve", args).values["workers"]
    return workers


def _add_serve_flags(parser: argparse.ArgumentParser) -> None:
    settings.add_flags(parser, settings.SERVE_OPTIONS)
    settings.add_config_flag(parser)
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration as TOML, each value's source in a comment, "
        "and exit",
    )
    # Set by the supervisor of `--workers N` on each worker's command line (workers.py).
    parser.add_argument("--internal-worker", metavar="I/N", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aggtrio", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"aggtrio {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser("serve", help="run the aggregator and its gRPC server")
    _add_serve_flags(serve)

    watch = commands.add_parser("watch", help="live view of a symbol's merged book")
    watch.add_argument("symbol", nargs="?", help="pair to watch (default: the server's default)")
    settings.add_flags(watch, settings.WATCH_OPTIONS)
    settings.add_config_flag(watch)
    watch.add_argument("--json", action="store_true", help="one JSON object per summary per line")
    watch.add_argument("--count", type=_positive_int, help="exit after N summaries")

    demo = commands.add_parser(
        "demo", help="all six simulated venues, the server and the live view, offline"
    )
    demo.add_argument("--symbols", default="ETHBTC,BTCUSDT", help="pairs to simulate and serve")
    demo.add_argument("--port", default="50051", help="gRPC port of the demo server")
    demo.add_argument("--json", action="store_true", help="print JSON lines instead of the view")
    demo.add_argument("--count", type=_positive_int, help="exit after N summaries")

    from aggtrio.simulator.faults import fault_help

    simulate = commands.add_parser(
        "simulate",
        help="run only the simulated venues (point serve at them with --venue-url)",
        epilog=fault_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument(
        "--venue",
        action="append",
        metavar="NAME=PORT",
        help="venue to simulate and its port, repeatable (default: every venue, binance=9001 "
        "bitstamp=9002 kraken=9003 coinbase=9004 okx=9005 bybit=9006)",
    )
    simulate.add_argument("--seed", type=int, help="seed for a reproducible market")
    simulate.add_argument(
        "--fault",
        action="append",
        metavar="VENUE:KIND[=VALUE]",
        help="inject a fault from the start (repeatable; kinds below)",
    )
    simulate.add_argument(
        "--chaos",
        metavar="SECONDS",
        help="every SECONDS on average, a random fault on a random venue, healed a few "
        "seconds later (one INFO line each)",
    )
    simulate.add_argument("--log-level", default="INFO")

    bench = commands.add_parser(
        "bench", help="the project's benchmark: ingest, latency, fan-out and memory (README)"
    )
    bench.add_argument(
        "--only",
        metavar="SECTIONS",
        help="comma-separated: book,ingest,latency,fanout,memory (all)",
    )
    bench.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    bench.add_argument(
        "--output", default="bench-results.json", help="JSON results file (bench-results.json)"
    )
    bench.add_argument("--duration", help="measured seconds per latency turn and fan-out phase")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


async def _until_signalled() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            return


async def _serve(config: ServeConfig) -> None:
    from aggtrio.app import run_service

    async with trio.open_nursery() as nursery:
        service = await nursery.start(run_service, config)
        await _until_signalled()
        await service.close_streams(SHUTDOWN_GRACE)
        nursery.cancel_scope.cancel()


async def _serve_worker(config: ServeConfig) -> None:
    """`_serve` as one worker of `serve --workers N`, speaking the supervisor's protocol."""
    from aggtrio.app import run_service

    # Open until the end: under systemd the whole group gets SIGTERM and the supervisor
    # forwards its own, and that second signal must not cut the orderly shutdown short.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            service = await nursery.start(run_service, config)
            nursery.start_soon(stop_when_supervisor_gone)
            report_ready()
            async for signum in signals:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                break
            await service.close_streams(SHUTDOWN_GRACE)
            nursery.cancel_scope.cancel()


def _check_tls(config: ServeConfig) -> None:
    """Load the certificate and key once before anything starts: a bad pair is a usage
    error (exit 2), not a failure of every worker."""
    from aggtrio.tls import server_context

    if config.tls_cert is not None and config.tls_key is not None:
        try:
            server_context(config.tls_cert, config.tls_key)
        except ConfigError as exc:
            raise ConfigError(f"--tls-cert/--tls-key: {exc}") from None


def _cmd_serve(args: argparse.Namespace) -> int:
    resolved = _resolve("serve", args)
    config = settings.serve_config(resolved)
    if args.print_config:
        print(resolved.to_toml(), end="")
        return 0
    _check_tls(config)
    if args.internal_worker is not None:
        try:
            index, count = parse_worker_slot(args.internal_worker)
        except ConfigError as exc:
            raise ConfigError(f"--internal-worker: {exc}") from None
        tag = worker_tag(index, count)
        configure_logging(config.log_level, config.log_format, tag)
        worker = functools.partial(_serve_worker, attrs.evolve(config, reuse_port=True))
        return _run_server(worker, config, f"aggtrio serve [{tag}]")
    workers: int = resolved.values["workers"]
    if workers == 1:
        configure_logging(config.log_level, config.log_format)
        return _run_server(functools.partial(_serve, config), config, "aggtrio serve")
    check_shareable(config, workers)
    configure_logging(config.log_level, config.log_format, "supervisor")
    return _run_server(Supervisor(config, workers).run, config, "aggtrio serve")


def _run_server(main: Callable[[], Awaitable[int | None]], config: ServeConfig, prog: str) -> int:
    """trio.run(main), its failure to listen as one line; the exit status."""
    from aggtrio.server import tune_gc

    tune_gc()
    try:
        code = trio.run(main)
    except BaseException as exc:
        leaf = single_leaf(exc)
        if isinstance(leaf, KeyboardInterrupt):  # Ctrl-C before the handler was set
            return 0
        if isinstance(leaf, WorkersFailedError):
            print(f"{prog}: error: {leaf}", file=sys.stderr)
            return 1
        # Typically the port is taken or the host is not an address of this machine.
        reason = _listen_error(exc)
        print(
            f"{prog}: error: cannot listen on {config.host}:{config.port}: {reason}",
            file=sys.stderr,
        )
        return 1
    return code or 0


def _listen_error(exc: BaseException) -> str:
    """The reason of an OSError that ended trio.run; anything else is re-raised."""
    leaf = single_leaf(exc)
    if not isinstance(leaf, OSError):
        raise exc
    return str(leaf.strerror or leaf)


def _cmd_watch(args: argparse.Namespace) -> int:
    from aggtrio.tls import client_context
    from aggtrio.watch import run_watch

    watch = settings.watch_config(_resolve("watch", args))
    server = watch.server
    symbol = parse_symbols(args.symbol)[0] if args.symbol else None
    ssl_context = None
    if watch.tls or watch.ca is not None:
        try:
            ssl_context = client_context(watch.ca)
        except ConfigError as exc:
            raise ConfigError(f"--ca: {exc}") from None
    try:
        return trio.run(
            lambda: run_watch(
                server, symbol, json_lines=args.json, count=args.count, ssl_context=ssl_context
            )
        )
    except KeyboardInterrupt:
        return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from aggtrio.demo import run_demo

    symbols = parse_symbols(args.symbols)
    port = parse_port(args.port)
    configure_logging("WARNING")
    try:
        return trio.run(
            lambda: run_demo(symbols, port=port, json_lines=args.json, count=args.count)
        )
    except BaseException as exc:
        if isinstance(single_leaf(exc), KeyboardInterrupt):
            return 0
        reason = _listen_error(exc)
        print(f"aggtrio demo: error: cannot listen on port {port}: {reason}", file=sys.stderr)
        return 1


def _cmd_simulate(args: argparse.Namespace) -> int:
    from aggtrio.simulator import SIMULATORS, run_chaos, run_simulators
    from aggtrio.simulator.faults import parse_fault, run_faults
    from aggtrio.simulator.runner import DEFAULT_PORTS

    venues: dict[str, int] = {}
    defaults = [f"{name}={DEFAULT_PORTS[name]}" for name in SIMULATORS]
    for text in args.venue or defaults:
        name, _, port_text = text.partition("=")
        if name not in SIMULATORS:
            known = ", ".join(SIMULATORS)
            raise ConfigError(f"--venue: cannot simulate venue {name!r} (known: {known})")
        try:
            venues[name] = parse_port(port_text)
        except ConfigError as exc:
            raise ConfigError(f"--venue: {exc}") from None
    faults = []
    for text in args.fault or []:
        try:
            faults.append(parse_fault(text, list(venues)))
        except ValueError as exc:
            raise ConfigError(f"--fault: {exc}") from None
    chaos: float | None = None
    if args.chaos is not None:
        try:
            chaos = parse_seconds(args.chaos)
        except ConfigError as exc:
            raise ConfigError(f"--chaos: {exc}") from None
    configure_logging(parse_log_level(args.log_level))

    async def simulate() -> None:
        async with trio.open_nursery() as nursery:
            sims = await nursery.start(
                lambda task_status: run_simulators(
                    venues, host=args.host, seed=args.seed, task_status=task_status
                )
            )
            for name, sim in sims.items():
                log.info("simulated %s at %s", name, sim.url)
            await nursery.start(run_faults, sims, faults)
            if chaos is not None:
                nursery.start_soon(run_chaos, sims, random.Random(args.seed), chaos)
            await _until_signalled()
            nursery.cancel_scope.cancel()

    trio.run(simulate)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    try:
        from aggtrio.bench.runner import SECTIONS, BenchOptions, run_bench
    except ModuleNotFoundError as exc:
        raise ConfigError(f"needs {exc.name}: pip install 'aggtrio[bench]'") from None

    sections = tuple(s.strip() for s in args.only.split(",")) if args.only else SECTIONS
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise ConfigError(f"--only: unknown section {unknown!r} (known: {', '.join(SECTIONS)})")
    try:
        duration = parse_seconds(args.duration) if args.duration is not None else None
    except ConfigError as exc:
        raise ConfigError(f"--duration: {exc}") from None
    options = BenchOptions(sections, args.quick, Path(args.output), duration)
    return run_bench(options)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": _cmd_serve,
    "watch": _cmd_watch,
    "demo": _cmd_demo,
    "simulate": _cmd_simulate,
    "bench": _cmd_bench,
}


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"aggtrio {args.command}: error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)
