"""The targets of several benchmark runs side by side: `python -m benchmarks.compare A.json B.json`.

Each file is a run's `latest.json` (copy it away before the next run overwrites it). Prints a
markdown table: one row per target, its figure in each run, the spread (largest / smallest),
what is wanted, and PASS/FAIL per run; the notes of the last run that has one.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from benchmarks.report import num, table


def targets(path: Path) -> dict[str, dict[str, Any]]:
    """The checks of one run, by name, in the order the run made them."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    return {check["name"]: check for section in raw.values() for check in section["checks"]}


def spread(values: list[float]) -> str:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    if len(clean) < 2 or min(clean) <= 0:
        return "-"
    return f"{max(clean) / min(clean):.2f}x"


def side_by_side(runs: list[dict[str, dict[str, Any]]]) -> list[str]:
    names = list(dict.fromkeys(name for run in runs for name in run))
    rows = []
    for name in names:
        checks = [run.get(name) for run in runs]
        first = next(c for c in checks if c is not None)
        unit = first["unit"]
        values = [None if c is None else c["value"] for c in checks]
        shown = ["-" if v is None else f"{num(v, 2)}{unit}" for v in values]
        results = " / ".join("n/a" if c is None else c["status"] for c in checks)
        note = next((c["note"] for c in reversed(checks) if c is not None and c["note"]), "")
        wanted = f"{first['op']} {num(first['limit'], 2)}{unit}"
        rows.append([name, *shown, spread([v for v in values if v is not None]), wanted])
        rows[-1] += [results, note]
    header = ["target", *(f"run {n}" for n in range(1, len(runs) + 1)), "spread", "wanted"]
    return table([*header, "result", "note"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="latest.json of each run, in order")
    args = parser.parse_args()
    print("\n".join(side_by_side([targets(path) for path in args.runs])))


if __name__ == "__main__":
    main()
