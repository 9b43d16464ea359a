"""Results: sections of markdown, targets checked PASS/FAIL, written to results/latest.md."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Check:
    """A target: ``value OP limit``; ``value`` None means it was not measured this run."""

    name: str
    value: float | None
    op: str  # "<=" or ">="
    limit: float
    unit: str = ""
    note: str = ""

    @property
    def status(self) -> str:
        if self.value is None or math.isnan(self.value):
            return "n/a"
        ok = self.value <= self.limit if self.op == "<=" else self.value >= self.limit
        return "PASS" if ok else "FAIL"


@dataclass
class Section:
    """What one measurement reports: markdown lines, targets, and raw data for the JSON."""

    key: str
    title: str
    lines: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table; columns after the first are right-aligned."""
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else float("nan")


def num(value: float | None, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def percent(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.0%}"


def ratio(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.2f}x"


def divide(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else float("nan")


def checks_table(sections: Sequence[Section]) -> list[str]:
    rows = []
    for section in sections:
        for check in section.checks:
            value = "-" if check.value is None else f"{num(check.value, 2)}{check.unit}"
            target = f"{check.op} {num(check.limit, 2)}{check.unit}"
            rows.append([check.name, value, target, f"**{check.status}**", check.note])
    if not rows:
        return ["(no targets were measured in this run)"]
    return table(["target", "measured", "wanted", "result", "note"], rows)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def render(sections: Sequence[Section], *, command: str, settings: str) -> str:
    lines = [
        "# reports-service benchmark",
        "",
        f"- run: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{command}`",
        f"- machine: {machine()}",
        f"- settings: {settings}",
        "",
    ]
    for section in sections:
        lines += [f"## {section.title}", "", *section.lines, ""]
    lines += ["## Targets", "", *checks_table(sections), ""]
    return "\n".join(lines)


def write(results_dir: Path, markdown: str, sections: Sequence[Section]) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "latest.md"
    path.write_text(markdown, encoding="utf-8")
    raw = {
        s.key: {"data": s.data, "checks": [{**asdict(c), "status": c.status} for c in s.checks]}
        for s in sections
    }
    (results_dir / "latest.json").write_text(
        json.dumps(raw, indent=2, default=str), encoding="utf-8"
    )
    return path
