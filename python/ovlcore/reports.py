"""What maintenance operations report: prune, check and disk usage."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PruneReport", "CheckReport", "DiskUsage"]


@dataclass
class PruneReport:
    """What a prune removed (ids and names) and how many bytes it freed."""

    deleted: list[str] = field(default_factory=list)
    space_reclaimed: int = 0

    def add(self, other: PruneReport) -> None:
        self.deleted.extend(other.deleted)
        self.space_reclaimed += other.space_reclaimed


@dataclass
class CheckReport:
    """Problems :meth:`Store.check` found, and with ``repair=True`` what it fixed."""

    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing is left wrong (no problem, or every one repaired)."""
        return not self.problems or len(self.repaired) >= len(self.problems)


@dataclass
class DiskUsage:
    """One row of ``docker system df``."""

    type: str
    total: int
    active: int
    size: int
    reclaimable: int
