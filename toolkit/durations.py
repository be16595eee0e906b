"""The one duration parser: flags, config and policy files, scenarios and rule settings all read
durations through it, with Prometheus's units (`500ms`, `5s`, `10m`, `2h`, `1d`) or a plain number
of seconds."""

from __future__ import annotations

import re
from typing import Any

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")


def seconds(value: Any) -> float:
    """`10m` -> 600.0; zero allowed (a scenario step at 0s, a rule's `for: 0m`)."""
    match = _DURATION.match(str(value).strip())
    if not match:
        raise ValueError(f"invalid duration {value!r} (examples: 500ms, 5s, 1m)")
    return float(match[1]) * UNITS.get(match[2] or "s", 1.0)


def positive_seconds(value: Any) -> float:
    """A duration that must be longer than nothing (an interval, a timeout)."""
    result = seconds(value)
    if result <= 0:
        raise ValueError(f"invalid duration {value!r} (examples: 500ms, 5s, 1m)")
    return result
