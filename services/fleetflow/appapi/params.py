"""Query parameters of the application API: each bad value is a 400 naming the parameter and what is accepted."""

import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from fleetflow.api.identifiers import METRIC_NAME, METRIC_NAME_RULE
from fleetflow.runtime.httpserver import HttpRefusal

MAX_LIMIT = 10_000
MAX_READINGS = 100_000  # a day at 1 reading/s fits one page
TIME_RULE = (
    "epoch milliseconds, RFC 3339 with an offset (2026-11-23T10:00:00Z), now, or a duration back from now "
    "(-30s, -15m, -1h, -7d)"
)
_RELATIVE = re.compile(r"-([0-9]{1,9})(ms|s|m|h|d|w)", re.ASCII)
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", re.ASCII)
_FRACTION_TAIL = re.compile(r"(\.\d{6})\d+")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Epoch ms beyond year 9999 cannot be shown as RFC 3339 and are surely a unit mistake (µs or ns sent as ms).
MAX_EPOCH_MS = 253402300799999


def refuse(name: str, value: str, accepted: str) -> HttpRefusal:
    return HttpRefusal(400, "invalid_parameter", f"{name}={value!r} is not valid: use {accepted}")


def parse_time(name: str, text: str, now_ms: int) -> int:
    """Epoch ms from any of the forms TIME_RULE names."""
    if text == "now":
        return now_ms
    if text.isascii() and text.isdigit():
        value = int(text)
        if value > MAX_EPOCH_MS:
            raise refuse(name, text, f"epoch milliseconds (this is after the year 9999: seconds or ms?); {TIME_RULE}")
        return value
    relative = _RELATIVE.fullmatch(text)
    if relative:
        return now_ms - int(relative.group(1)) * _UNIT_MS[relative.group(2)]
    if _RFC3339.fullmatch(text):
        try:  # fromisoformat takes neither a lowercase t/z nor more than 6 fraction digits
            parsed = datetime.fromisoformat(_FRACTION_TAIL.sub(r"\1", text.upper()))
        except ValueError:  # e.g. month 13
            raise refuse(name, text, TIME_RULE) from None
        return (parsed - _EPOCH) // timedelta(milliseconds=1)
    raise refuse(name, text, TIME_RULE)


def time_range(query: Mapping[str, str], default_from: str, clock: Callable[[], float] = time.time) -> tuple[int, int]:
    """(from, to) in epoch ms; `to` defaults to now (inclusive of this millisecond)."""
    now_ms = int(clock() * 1000)
    since = parse_time("from", query.get("from", default_from), now_ms)
    until = parse_time("to", query["to"], now_ms) if "to" in query else now_ms + 1
    if since >= until:
        raise HttpRefusal(400, "invalid_parameter", f"from={query.get('from', default_from)!r} is not before "
                          f"to={query.get('to', 'now')!r}: the range is empty")  # fmt: skip
    return since, until


def limit(query: Mapping[str, str], default: int, maximum: int = MAX_LIMIT) -> int:
    text = query.get("limit")
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= maximum:
        raise refuse("limit", text, f"a whole number from 1 to {maximum}")
    return int(text)


def metrics(query: Mapping[str, str]) -> frozenset[str] | None:
    """`metrics=temp_c,battery_v`: the metrics to keep (None: all)."""
    text = query.get("metrics")
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    for name in names:
        if not METRIC_NAME.fullmatch(name):
            raise refuse("metrics", text, f"comma-separated metric names, each {METRIC_NAME_RULE}")
    return frozenset(names)


def choice(query: Mapping[str, str], name: str, accepted: tuple[str, ...], default: str | None = None) -> str | None:
    text = query.get(name, default)
    if text is not None and text not in accepted:
        raise refuse(name, text, "one of " + ", ".join(accepted))
    return text


def choices(query: Mapping[str, str], name: str, accepted: tuple[str, ...]) -> tuple[str, ...]:
    """`kinds=alerts,commands`: a comma-separated subset of `accepted` (all of them when absent)."""
    text = query.get(name)
    if text is None:
        return accepted
    picked = tuple(dict.fromkeys(part.strip() for part in text.split(",")))
    if not picked or any(part not in accepted for part in picked):
        raise refuse(name, text, "a comma-separated list of " + ", ".join(accepted))
    return picked


_GROUP = re.compile(r"[A-Za-z0-9_.-]+=[^,=\s]+(,[A-Za-z0-9_.-]+=[^,=\s]+)*", re.ASCII)
GROUP_RULE = "device=<id>, or <label>=<value> pairs joined by ',' as the window step groups them (site=depot-a)"


def group(query: Mapping[str, str]) -> str | None:
    text = query.get("group")
    if text is not None and not _GROUP.fullmatch(text):
        raise refuse("group", text, GROUP_RULE)
    return text


def identifier(query: Mapping[str, str], name: str, check: Callable[[str], object]) -> str | None:
    """An optional identifier checked by `check` (which raises ValueError naming what is accepted)."""
    text = query.get(name)
    if text is None:
        return None
    try:
        check(text)
    except ValueError as exc:
        raise HttpRefusal(400, "invalid_parameter", f"{name}={text!r} is not valid: {exc}") from None
    return text


def path_identifier(text: str, name: str, check: Callable[[str], object]) -> str:
    """An identifier from the path, checked by `check`: 400 `invalid_<name>` naming it."""
    try:
        check(text)
    except ValueError as exc:
        raise HttpRefusal(400, f"invalid_{name}", f"{name} {text!r} is not valid: {exc}") from None
    return text
