"""Small value parsers shared by the policy schema and the test cases: durations and glob patterns."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from datetime import timedelta

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
GLOB_CHARS = frozenset("*?[")


def parse_duration(text: str) -> timedelta:
    """`30s`, `5m`, `1h`, `1h30m`, `2d` (units in that order, each at most once). ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip()) if text.strip() else None
    if match is None or not any(match.groups()):
        raise ValueError(f"expected a duration like 30s, 5m, 1h30m or 2d, got {text!r}")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    value = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if value <= timedelta(0):
        raise ValueError(f"a duration must be longer than zero, got {text!r}")
    return value


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out or "0s"


def check_glob(pattern: str) -> str:
    """Validate a glob pattern (fnmatch style); ValueError says what is wrong with it."""
    if not pattern:
        raise ValueError("a pattern must not be empty")
    if pattern != pattern.strip():
        raise ValueError(f"pattern {pattern!r} has leading or trailing spaces")
    index = 0
    while index < len(pattern):
        if pattern[index] == "[":
            # fnmatch: `[!...]` negates, and a `]` right after `[` or `[!` is a member, not the end
            body = index + 1
            if pattern[body : body + 1] == "!":
                body += 1
            if pattern[body : body + 1] == "]":
                body += 1
            close = pattern.find("]", body)
            if close == -1:
                raise ValueError(f"pattern {pattern!r} has an unclosed '[' at offset {index}")
            index = close
        index += 1
    return pattern


def is_glob(pattern: str) -> bool:
    return not GLOB_CHARS.isdisjoint(pattern)


def literal_prefix(pattern: str) -> str:
    """The part of a pattern before its first glob character."""
    for index, char in enumerate(pattern):
        if char in GLOB_CHARS:
            return pattern[:index]
    return pattern


class Glob:
    """Any-of matcher for a list of fnmatch patterns; `*` also crosses dots. Exact names use a set."""

    __slots__ = ("exact", "patterns", "regex")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self.exact = frozenset(p for p in self.patterns if not is_glob(p))
        globs = [p for p in self.patterns if is_glob(p)]
        self.regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in globs)) if globs else None

    def __call__(self, value: str) -> bool:
        return value in self.exact or (self.regex is not None and self.regex.match(value) is not None)

    def first_match(self, value: str) -> str | None:
        """The first pattern that matches (for explanations)."""
        for pattern in self.patterns:
            if pattern == value or (is_glob(pattern) and fnmatch.fnmatchcase(value, pattern)):
                return pattern
        return None
