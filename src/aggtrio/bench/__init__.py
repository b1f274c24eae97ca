"""The project's own benchmark: ``nox -s bench`` / ``aggtrio bench``.

Ingest runs in-process on pre-generated venue messages; latency, fan-out and memory run on
loopback with real processes (simulated venues, the server, load-generating clients), each
against a floor measured in the same run.
"""
