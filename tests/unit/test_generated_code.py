"""The committed protobuf/purerpc code must be exactly what protos/ generates today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "src" / "aggtrio" / "_proto"


def _generated_files(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): path.read_text()
        for path in root.rglob("*")
        if path.suffix in (".py", ".pyi")
    }


def test_committed_generated_code_is_current(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_proto.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = _generated_files(tmp_path)
    committed = _generated_files(COMMITTED)
    assert sorted(fresh) == sorted(committed)
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert stale == [], f"run `nox -s proto` and commit the result; stale: {stale}"


def test_schema_keeps_its_published_field_numbers() -> None:
    from aggtrio._proto.orderbook_pb2 import Level, Summary, SummaryRequest

    def numbers(message: type) -> dict[str, int]:
        return {f.name: f.number for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]

    # Existing clients depend on these: never renumber or retype, only add.
    assert (
        numbers(Summary).items()
        >= {"spread": 1, "bids": 2, "asks": 3, "live_exchanges": 4, "arrival_time": 40}.items()
    )
    assert numbers(Level).items() >= {"exchange": 1, "price": 2, "amount": 3}.items()
    assert numbers(SummaryRequest).items() >= {"symbol": 1}.items()


def test_grpc_protos_live_in_their_own_pool_beside_grpcio_s_copies() -> None:
    # grpcio-health-checking registers grpc.health.v1 messages in the default pool: ours must
    # not clash with them when one process loads both, and the two must speak the same bytes.
    from grpc_health.v1 import health_pb2 as grpcio_health

    from aggtrio._proto.grpc.health.v1 import health_pb2

    ours = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)
    theirs = grpcio_health.HealthCheckResponse.FromString(ours.SerializeToString())
    assert theirs.status == grpcio_health.HealthCheckResponse.NOT_SERVING
    assert health_pb2.DESCRIPTOR.pool is not grpcio_health.DESCRIPTOR.pool
