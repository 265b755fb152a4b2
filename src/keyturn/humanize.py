"""Times as people read them, shared by the CLI, `keyturn exec` and the SDK's messages for models.

No dependencies: `keyturn exec` and `keyturn hook` import this on their fast path.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def human_duration(seconds: float) -> str:
    """`1h05m`, `4m30s`, `12s`: short enough for an 80-column status line."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    return f"{secs}s"


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time from the API (a string, `Z` allowed), or None when it is not one."""
    if isinstance(value, datetime):
        return value
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def time_left(expires_at: Any, now: datetime | None = None) -> str:
    """How long until `expires_at`: `4m30s`, `expired`, or "" when there is no (valid) deadline."""
    moment = parse_time(expires_at) if expires_at else None
    if moment is None:
        return ""
    seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    return "expired" if seconds <= 0 else human_duration(seconds)


def span(start: Any, end: Any) -> str:
    """The duration between two API times, or "" when either is missing."""
    first, last = parse_time(start), parse_time(end)
    if first is None or last is None:
        return ""
    return human_duration((last - first).total_seconds())


def clock(timestamp: Any) -> str:
    """`2026-11-23 06:22:14` (UTC): the moment, without microseconds and offset noise."""
    moment = parse_time(timestamp)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else str(timestamp)
