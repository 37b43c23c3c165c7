"""Docker-style text: human sizes, relative times, aligned tables."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

__all__ = ["human_size", "human_ago", "table", "truncate"]


def human_size(n: float) -> str:
    """Docker's ``HumanSizeWithPrecision(n, 3)``: decimal units, 3 significant digits (``4.03MB``)."""
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n /= 1000.0
        i += 1
    return f"{n:.3g}{units[i]}"


def human_ago(t: datetime | None, now: datetime | None = None) -> str:
    """Docker's relative times: ``Less than a second ago``, ``5 days ago``, ``About an hour ago``."""
    if t is None:
        return "N/A"
    now = now or datetime.now(timezone.utc)
    s = (now - t).total_seconds()
    if s < 1:
        return "Less than a second ago"
    if s < 60:
        return f"{int(s)} second{'s' if int(s) != 1 else ''} ago"
    m = s / 60
    if m < 2:
        return "About a minute ago"
    if m < 60:
        return f"{int(m)} minutes ago"
    h = m / 60
    if h < 2:
        return "About an hour ago"
    if h < 48:
        return f"{int(h)} hours ago"
    d = h / 24
    if d < 14:
        return f"{int(d)} days ago"
    if d < 60:
        return f"{int(d / 7)} weeks ago"
    if d < 730:
        return f"{int(d / 30)} months ago"
    return f"{int(d / 365)} years ago"


def truncate(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell and separated by three spaces, as Docker's tabwriter does."""
    widths = [len(h) for h in headers]
    for r in rows:
        for i, cell in enumerate(r):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for r in [list(headers), *[list(r) for r in rows]]:
        cells = [c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)
