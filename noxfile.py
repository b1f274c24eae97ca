"""Developer tasks: `nox -s tests`, `nox -s lint`, `nox -s proto`, `nox -s demo`,
`nox -s bench` (not run by default: it takes minutes and wants a quiet machine)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Unit, property and integration tests (real sockets, simulated venues)."""
    session.install("-e", ".[test]")
    # Serially: the integration tests time real sockets, and beside each other on two cores
    # (pytest-xdist was tried) several of them missed their timeouts now and then.
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint + format check) and mypy --strict."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session
def proto(session: nox.Session) -> None:
    """Regenerate src/aggtrio/_proto from protos/ (commit the result)."""
    session.install("-e", ".[test]")
    session.run("python", "scripts/generate_proto.py")


@nox.session
def demo(session: nox.Session) -> None:
    """Run the offline demo: simulated venues, the server and the live view."""
    session.install("-e", ".")
    session.run("aggtrio", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark (README, Performance); arguments go to `aggtrio bench`, e.g. -- --quick."""
    session.install("-e", ".[bench]")
    session.run("aggtrio", "bench", *session.posargs)
