"""Durations as operators write them: seconds (`3600`, `3600.5`) or a number
with one unit (`90s`, `15m`, `12h`, `30d`, `2w`). One parser for every
setting and flag that takes one (token expiry, retention)."""

from __future__ import annotations

import re

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
# Ten years: beyond this a value is a typo (or an overflow), not a plan.
MAX_SECONDS = 10 * 365 * 86400


def parse_duration(value: object, field: str) -> float:
    """Seconds (> 0, at most ten years) from an int, float or text; ValueError
    naming `field` otherwise (booleans are refused: YAML reads `yes` as True)."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: must be a duration such as 3600, 90m, 12h or 30d")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m[1]) * UNITS[m[2] or "s"]
    else:
        raise ValueError(f"{field}: must be a duration such as 3600, 90m, 12h or 30d")
    if not 0 < seconds <= MAX_SECONDS:  # also refuses NaN
        raise ValueError(f"{field}: must be more than 0 and at most ten years")
    return seconds
