"""A writer process for the concurrency test: COUNT reports, one transaction each."""

from __future__ import annotations

import asyncio
import sys

from reports_service.db import make_engine
from reports_service.records import NewReport
from reports_service.repository import ReportRepository


async def write(url: str, prefix: str, count: int) -> None:
    repository = ReportRepository(make_engine(url, busy_timeout=30))
    try:
        for i in range(count):
            await repository.add_reports([NewReport(f"{prefix}-{i}", f"{prefix} {i}", "c")])
            await repository.add_reports(
                [NewReport(f"{prefix}-{i}", f"{prefix} {i} v2", "c")], replace=True
            )
    finally:
        await repository.dispose()


if __name__ == "__main__":
    asyncio.run(write(sys.argv[1], sys.argv[2], int(sys.argv[3])))
