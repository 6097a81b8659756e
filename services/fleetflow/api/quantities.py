"""Durations ("30s", "5m", "7d", "1h30m") and byte sizes (1048576, "512Mi", "10Gi") as written in CR specs."""

import re

DURATION_PATTERN = r"^([0-9]+(ms|s|m|h|d))+$"
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_RULE = "a number with a unit (ms, s, m, h, d), e.g. 500ms, 30s, 5m, 12h, 7d or 1h30m"

BYTES_PATTERN = r"^[0-9]+(Ki|Mi|Gi|Ti|K|M|G|T)?$"
_BYTES = re.compile(BYTES_PATTERN)
_BYTES_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}  # fmt: skip
BYTES_RULE = "a whole number of bytes or a quantity such as 512Mi, 10Gi or 1G"


def parse_duration(text: str) -> float:
    """Seconds in a duration such as "1h30m"; ValueError naming the value otherwise."""
    if not isinstance(text, str) or not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"duration {text!r} is not valid: use {DURATION_RULE}")
    return sum(int(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))


def parse_bytes(value: int | str) -> int:
    """Bytes in a size such as "10Gi" or 1048576; ValueError naming the value otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"size {value!r} is not valid: use {BYTES_RULE}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size {value!r} is not valid: it must not be negative")
        return value
    match = _BYTES.fullmatch(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"size {value!r} is not valid: use {BYTES_RULE}")
    digits = value.rstrip("KMGTi")
    return int(digits) * _BYTES_UNITS[value[len(digits) :]]
