"""How much of a core the benchmark really gets: `python -m benchmarks.machine --seconds 2`.

A busy loop, pinned to a core by the caller, notes every gap of more than 0.5 ms between two
of its iterations: time the core spent on something else (other processes, the hypervisor).
Prints one JSON object: the share of the time lost, the number of gaps and the longest.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

GAP = 0.0005


def probe(seconds: float) -> dict[str, Any]:
    start = last = time.perf_counter()
    end = start + seconds
    gaps: list[float] = []
    while last < end:
        now = time.perf_counter()
        if now - last > GAP:
            gaps.append(now - last)
        last = now
    wall = last - start
    return {
        "seconds": wall,
        "lost": sum(gaps) / wall if wall else 0.0,
        "gaps": len(gaps),
        "longest_ms": 1000 * max(gaps, default=0.0),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.machine", description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    print(json.dumps(probe(min(max(args.seconds, 0.1), 30.0))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
