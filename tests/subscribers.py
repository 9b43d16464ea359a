"""A change feed subscriber for in-process tests."""

from __future__ import annotations

from reports_service.records import Change


class Collector:
    """A subscriber that keeps what it is delivered."""

    def __init__(self) -> None:
        self.changes: list[Change] = []

    def deliver(self, change: Change) -> None:
        self.changes.append(change)

    @property
    def queue_depth(self) -> int:
        return 0

    def names(self) -> list[str]:
        return [change.report.name for change in self.changes]

    def versions(self) -> list[int]:
        return [change.version for change in self.changes]
