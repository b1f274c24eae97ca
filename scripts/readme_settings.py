"""Rewrite the settings tables in README.md from the table in src/aggtrio/settings.py.

`python scripts/readme_settings.py` after changing an option; `--check` exits 1 instead of
writing if the README is out of date (tests/unit/test_settings.py runs that).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
sys.path.insert(0, str(ROOT / "src"))

from aggtrio.settings import SERVE_OPTIONS, WATCH_OPTIONS, markdown_table  # noqa: E402

HEADER = markdown_table(()).splitlines()[0]


def updated(readme: str) -> str:
    """`readme` with its settings tables, serve's then watch's, regenerated."""
    tables = [markdown_table(SERVE_OPTIONS), markdown_table(WATCH_OPTIONS)]
    lines = readme.splitlines(keepends=True)
    out: list[str] = []
    index = 0
    while index < len(lines):
        if lines[index].rstrip("\n") == HEADER:
            if not tables:
                raise SystemExit("README.md has more settings tables than settings.py")
            out.append(tables.pop(0))
            while index < len(lines) and lines[index].startswith("|"):
                index += 1
            continue
        out.append(lines[index])
        index += 1
    if tables:
        raise SystemExit("README.md lacks a settings table; add its header line where it goes")
    return "".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is stale")
    args = parser.parse_args()
    current = README.read_text(encoding="utf-8")
    new = updated(current)
    if args.check:
        if new != current:
            print("README.md: settings tables are stale; run scripts/readme_settings.py")
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
