"""The committed protobuf/purerpc code must be exactly what protos/ generates today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "src" / "aggtrio" / "_proto"


def test_committed_generated_code_is_current(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_proto.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = {p.name: p.read_text() for p in tmp_path.iterdir() if p.suffix in (".py", ".pyi")}
    committed = {p.name: p.read_text() for p in COMMITTED.iterdir() if p.suffix in (".py", ".pyi")}
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
