"""Generated telemetry bodies (hypothesis) and a simple reference of what the intake must do with each.

The reference is written for clarity, not speed: Python's json with a hook that sees every key, and one plain
check per rule of docs/devices.md#limits. It returns every rule a body breaks, so a test can demand that the
gateway's refusal names one of them, or the exact readings a valid body holds, so a test can demand that they
are stored exactly once."""

import itertools
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st

MIN_TS, MAX_TS = 946684800000, 4102444800000
MAX_SEQ = 2**63 - 1
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII)
METRIC = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True)
class Expected:
    refusals: frozenset[str]  # every rule the body breaks; empty: it must be accepted
    readings: tuple[tuple[int, int], ...] = ()  # (seq, ts ms) of an accepted body, in order


class _Object(dict[str, Any]):
    """A JSON object that remembers every pair, a repeated key's earlier values included."""

    pairs: list[tuple[str, Any]]

    @property
    def duplicate(self) -> bool:
        return len(self.pairs) != len(self)


def _pairs(pairs: list[tuple[str, Any]]) -> _Object:
    result = _Object(pairs)
    result.pairs = pairs
    return result


def _nested_duplicate(value: Any) -> bool:
    if isinstance(value, _Object):
        return value.duplicate or any(_nested_duplicate(v) for _, v in value.pairs)
    if isinstance(value, list):
        return any(_nested_duplicate(v) for v in value)
    return False


class _NotJson:
    """NaN or Infinity: Python's json reads them, JSON does not have them."""


def _not_json(_: str) -> Any:
    return _NotJson()


def _has_not_json(value: Any) -> bool:
    if isinstance(value, _Object):
        return any(_has_not_json(v) for _, v in value.pairs)
    if isinstance(value, dict):
        return any(_has_not_json(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_not_json(v) for v in value)
    return isinstance(value, _NotJson)


def expected(body: bytes, max_readings: int, max_body: int) -> Expected:
    if len(body) > max_body:
        return Expected(frozenset({"body_too_large"}))
    try:
        document = json.loads(body, object_pairs_hook=_pairs, parse_constant=_not_json)
    except ValueError:  # includes bodies that are not UTF-8
        return Expected(frozenset({"malformed_json"}))
    # A decoder that checks while it parses may report a rule broken before the bad literal: every rule counts.
    broken: set[str] = {"malformed_json"} if _has_not_json(document) else set()
    if _nested_duplicate(document):
        broken.add("duplicate_key")
    if not isinstance(document, dict) or set(document) != {"readings"} or not isinstance(document["readings"], list):
        return Expected(frozenset(broken | {"invalid_reading"}))
    readings = []
    for reading in document["readings"]:
        found = _reading(reading, broken)
        if found is not None:
            readings.append(found)
    count = len(document["readings"])
    if count == 0:
        broken.add("empty_batch")
    if count > max_readings:
        broken.add("batch_too_large")
    if any(after[0] <= before[0] for before, after in itertools.pairwise(readings)):
        broken.add("seq_not_increasing")
    return Expected(frozenset(broken), tuple(readings) if not broken else ())


def _reading(reading: Any, broken: set[str]) -> tuple[int, int] | None:
    """Checks every field the reading has (a decoder may report any of them first)."""
    if not isinstance(reading, dict):
        broken.add("invalid_reading")
        return None
    if set(reading) != {"seq", "ts", "metrics"}:
        broken.add("invalid_reading")
    seq, ts_ms = reading.get("seq"), None
    for key, value in reading.pairs if isinstance(reading, _Object) else reading.items():  # a repeated one too
        if key == "seq" and (type(value) is not int or not 0 <= value <= MAX_SEQ):
            broken.add("invalid_reading")
        elif key == "ts":
            ts_ms = _ts(value, broken)
        elif key == "metrics":
            _metrics(value, broken)
    return (seq, ts_ms) if type(seq) is int and ts_ms is not None else None


def _metrics(metrics: Any, broken: set[str]) -> None:
    if not isinstance(metrics, dict) or not metrics:
        broken.add("invalid_reading")
        return
    for name, value in metrics.pairs if isinstance(metrics, _Object) else metrics.items():  # a decoder may see any
        if not METRIC.fullmatch(name):
            broken.add("invalid_metric_name")
        if isinstance(value, _NotJson):
            continue
        if type(value) not in (int, float):
            broken.add("invalid_reading")
        elif not math.isfinite(value):
            broken.add("non_finite_number")


def _ts(ts: Any, broken: set[str]) -> int | None:
    if type(ts) is int:
        if MIN_TS <= ts < MAX_TS:
            return ts
    elif isinstance(ts, str) and RFC3339.fullmatch(ts):
        text = re.sub(r"(\.\d{6})\d+", r"\1", ts.upper())
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            parsed = None
        if parsed is not None:
            ms = (parsed - datetime(1970, 1, 1, tzinfo=UTC)) // _MS
            if MIN_TS <= ms < MAX_TS:
                return ms
    broken.add("invalid_timestamp")
    return None


_MS = datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)

# --- generation -----------------------------------------------------------------------------------------------

NOW_MS = 1_795_428_000_000  # 2026-11-23T10:00:00Z

names = st.one_of(
    st.sampled_from(["t", "temp_c", "_x", "door_open", "a" * 64]),
    st.sampled_from(["9lives", "temp.c", "temp\n", "", "a" * 65, "tëmp", "a b"]),
)
values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(-(10**6), 10**6),
    st.sampled_from([1e15, 1e-7, 0, -0.0, 1e308]),
    st.sampled_from(["1e999", "NaN", '"hot"', "true", "null"]).map(lambda raw: _Raw(raw)),
)
seqs = st.one_of(st.integers(0, 1000), st.sampled_from([-1, MAX_SEQ, MAX_SEQ + 1, 2**64]),
                 st.sampled_from([1.0, "1", True]))  # fmt: skip
timestamps = st.one_of(
    st.integers(NOW_MS - 10**9, NOW_MS + 10**9),
    st.sampled_from([MIN_TS - 1, MIN_TS, MAX_TS - 1, MAX_TS, 1795428000, 1.7954e12]),
    st.sampled_from(["2026-11-23T10:00:00Z", "2026-11-23t10:00:00.123456789z", "2026-11-23 11:00:00+01:00",
                     "2026-11-23T10:00:00", "20261123T100000Z", "2026-W47-1T10:00:00Z", "2026-13-01T00:00:00Z",
                     "2026-11-23T10:00:00Z\n", "1999-12-31T23:59:59Z", "yesterday"]),
)  # fmt: skip


@dataclass(frozen=True)
class _Raw:
    """A JSON literal written as is (what json.dumps would not produce)."""

    text: str


def _write(value: Any) -> str:
    if isinstance(value, _Raw):
        return value.text
    if isinstance(value, float) and value == 1e15:
        return "1e15"  # as a device writes it: it grows once the gateway encodes it
    return json.dumps(value)


def _object(pairs: list[tuple[str, Any]]) -> str:
    """A JSON object from pairs, written in order, a repeated key included."""
    return "{" + ",".join(f"{json.dumps(key)}:{value}" for key, value in pairs) + "}"


@st.composite
def reading_text(draw: st.DrawFn, seq: int) -> str:
    """One reading: valid (with `seq`), or with any of its parts drawn from values that break a rule."""
    if draw(st.booleans()):
        metrics = draw(st.dictionaries(st.sampled_from(["t", "temp_c", "v"]), st.floats(-1e6, 1e6), min_size=1))
        pairs = [(name, _write(value)) for name, value in metrics.items()]
        return _object([("seq", _write(seq)), ("ts", _write(NOW_MS + seq)), ("metrics", _object(pairs))])
    metrics_pairs = draw(st.lists(st.tuples(names, values), max_size=4))
    fields = [("seq", _write(draw(seqs))), ("ts", _write(draw(timestamps))),
              ("metrics", _object([(name, _write(value)) for name, value in metrics_pairs]))]  # fmt: skip
    if draw(st.integers(0, 4)) == 0:
        fields.append(draw(st.sampled_from([("x", "1"), ("seq", "2"), ("ts", str(NOW_MS))])))  # unknown or repeated
    return _object(fields)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A telemetry body: mostly valid, often with one rule broken somewhere, sometimes not JSON at all."""
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return draw(st.sampled_from([b"", b"{", b"[]", b'{"readings": {}}', b"\xff\xfe", b'{"readings": []}']))
    first = draw(st.integers(0, 10**6))
    count = draw(st.integers(1, 12))
    texts = [draw(reading_text(first + i)) for i in range(count)]
    if draw(st.integers(0, 9)) == 0:
        texts = list(reversed(texts))
    return ('{"readings":[' + ",".join(texts) + "]}").encode()


@st.composite
def typed_readings(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Readings a typed protocol (protobuf: int64 seq and ts, map<string, double>) can carry, valid or not."""
    first = draw(st.integers(0, 10**6))
    count = draw(st.integers(0, 12))
    readings = []
    for i in range(count):
        valid = draw(st.booleans())
        seq = first + i if valid else draw(st.sampled_from([-1, first + i, MAX_SEQ]))
        ts = NOW_MS + i if valid else draw(st.sampled_from([NOW_MS + i, MIN_TS - 1, MAX_TS, 1795428000, -5]))
        metric_names = st.sampled_from(["t", "v"]) if valid else names
        metric_values = st.floats(-1e6, 1e6) if valid else st.floats(allow_nan=False, allow_infinity=False)
        metrics = draw(st.dictionaries(metric_names, metric_values, min_size=0 if not valid else 1, max_size=3))
        readings.append({"seq": seq, "ts": ts, "metrics": metrics})
    if draw(st.integers(0, 9)) == 0:
        readings.reverse()
    return readings
