"""Times as image configs and records write them: RFC 3339 in UTC."""

from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["format_time", "parse_time", "now", "normalize_time"]


def format_time(t: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` and microseconds (fixed width: such strings sort by time)."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(s: str) -> datetime:
    """Parse RFC 3339 times, including Go's nanosecond precision."""
    s = s.strip().replace("Z", "+00:00")
    if "." in s:
        head, _, rest = s.partition(".")
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        s = f"{head}.{digits[:6].ljust(6, '0')}{rest}"
    t = datetime.fromisoformat(s)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def now() -> str:
    return format_time(datetime.now(timezone.utc))


def normalize_time(s: object) -> str:
    """A config's ``created`` in the fixed-width form (the epoch when missing or unreadable)."""
    if isinstance(s, str) and s:
        try:
            return format_time(parse_time(s))
        except ValueError:
            pass
    return format_time(datetime.fromtimestamp(0, timezone.utc))
