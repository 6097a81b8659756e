"""The reading codec: device request bodies in, the batch messages that travel through JetStream.

msgspec validates types while it decodes, so one pass checks and parses a request."""

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec

from fleetflow.api.identifiers import METRIC_NAME, METRIC_NAME_RULE

# Timestamps outside this range are almost always a unit mistake (seconds or microseconds sent as ms).
MIN_TS_MS = 946684800000  # 2000-01-01T00:00:00Z
MAX_TS_MS = 4102444800000  # 2100-01-01T00:00:00Z
TS_RULE = "send epoch milliseconds between 2000-01-01 and 2100-01-01, or RFC 3339 with an offset"

# Every store must hold a seq: SQLite's INTEGER and Cassandra's bigint are signed 64-bit.
MAX_SEQ = 2**63 - 1
SEQ_RULE = f"seq must be an integer from 0 to {MAX_SEQ} (2^63 - 1)"
# RFC 3339 section 5.6 (date-time) only: datetime.fromisoformat alone also takes ISO 8601 forms such as
# "20261123T100000Z", week dates or a missing seconds field, which the docs never promised.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", re.ASCII)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
_FRACTION_TAIL = re.compile(r"(\.\d{6})\d+")

# The constraints live in the types, so msgspec checks them in C while it decodes: no per-reading Python.
Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
EpochMs = Annotated[int, msgspec.Meta(ge=MIN_TS_MS, lt=MAX_TS_MS)]
# Metric names are not constrained here: msgspec checks patterns in Python, once per key, which costs more
# than decoding. The gateway checks each distinct name of a batch instead (see check_metric_names).
Metrics = Annotated[dict[str, float], msgspec.Meta(min_length=1)]


# The reading structs are gc=False: a 100-reading request makes 200 of them (decoded, then validated), and
# tracked by the garbage collector they made it collect every few requests. They hold only numbers, strings
# and a dict of floats, so they can be in no reference cycle.
class ReadingIn(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One reading as a device sends it: `ts` in epoch milliseconds or RFC 3339."""

    seq: Seq
    ts: EpochMs | str
    metrics: Metrics


class TelemetryRequest(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    readings: list[ReadingIn]


class Reading(msgspec.Struct, array_like=True, gc=False):
    """A validated reading: `ts` in epoch milliseconds. Encoded as [seq, ts, metrics] to keep messages small.

    Not tracked by Python's cyclic garbage collector (gc=False): it holds two ints and a dict of floats, so it
    can never be part of a reference cycle, and a fetch decodes tens of thousands of them at once; tracked,
    they survived into the older generations and set off full collections that cost a writer about a quarter
    of its CPU (docs/performance.md, "The writer's cost")."""

    seq: int
    ts: int
    metrics: dict[str, float]


class ReadingBatch(msgspec.Struct, kw_only=True):
    """The unit that travels from gateway to store: one device's readings from one request."""

    fleet: str
    device: str
    readings: list[Reading]
    received_ms: int


_request_decoder = msgspec.json.Decoder(TelemetryRequest)
_batch_decoder = msgspec.json.Decoder(ReadingBatch)
_encoder = msgspec.json.Encoder()


class CodecError(ValueError):
    """A body that is not a valid telemetry request; `reason` is a short machine-readable label."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(detail)


def decode_request(body: bytes) -> TelemetryRequest:
    try:
        request = _request_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _explain(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise CodecError("malformed_json", f"body is not valid JSON: {exc}{_non_finite_hint(str(exc), body)}") from None
    _check_no_duplicate_keys(body, request)
    return request


_AT_BYTE = re.compile(r"\(byte (\d+)\)$")
_NON_FINITE_WORD = re.compile(rb"NaN|Infinity")


def _non_finite_hint(message: str, body: bytes) -> str:
    """What a device that wrote NaN or Infinity (as Python's json.dumps does for such floats) should know."""
    at = _AT_BYTE.search(message)
    word = _NON_FINITE_WORD.match(body, int(at.group(1))) if at else None
    return f"; {word.group().decode()} is not a JSON number; metric values must be finite numbers" if word else ""


# A key is a string followed by ':'. Counting that pattern counts every key, plus any string value that happens
# to end the same way; so a count equal to the keys the decoded request has proves there is no duplicate key.
_KEY = re.compile(rb'"\s*:')


def _check_no_duplicate_keys(body: bytes, request: TelemetryRequest) -> None:
    """msgspec keeps the last of two equal keys; a device's {"t": 1, "t": 2} must be refused, not guessed."""
    keys = 1 + sum(3 + len(r.metrics) for r in request.readings)
    # Every key in the body is followed by exactly one ':' outside strings, and a duplicate is a key the decoded
    # request lacks; so as many colons as decoded keys proves there is none. It is a byte count, where the
    # pattern below allocates a match per key: the common body (epoch ms, no colon in a string) stops here.
    if body.count(b":") == keys:
        return
    if len(_KEY.findall(body)) == keys:
        return
    refuse_duplicate_keys(body)  # the exact, slower check, only for the rare body where the count alone cannot tell


def refuse_duplicate_keys(document: bytes) -> None:
    """CodecError("duplicate_key") naming the key if any object of the JSON `document` (already decoded once, so
    valid) holds a key twice. Exact but slow: callers count first where they can, as decode_request does."""
    try:
        json.loads(document, object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as exc:
        raise CodecError("duplicate_key", f"key {exc.key!r} appears twice in one object; send each key once") from None


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _explain(message: str) -> CodecError:
    """A reason label and a hint for msgspec's message, which already names the value's path."""
    if message.startswith("Number out of range"):  # 1e999 and the like: JSON's only way to say inf
        return CodecError("non_finite_number", f"{message}; metric values must be finite numbers")
    if message.endswith("].seq`"):
        return CodecError("invalid_reading", f"{message}; {SEQ_RULE}")
    if message.endswith("].ts`"):
        return CodecError("invalid_timestamp", f"{message}; {TS_RULE}")
    if message.endswith("].metrics`") and "length" in message:
        return CodecError("invalid_reading", f"{message}; send at least one metric")
    return CodecError("invalid_reading", message)


def check_metric_names(readings: list[ReadingIn], known: set[str]) -> None:
    """Every metric name must be an identifier; `known` remembers names already seen valid."""
    names = set().union(*(r.metrics for r in readings))
    for name in names - known:
        if not METRIC_NAME.fullmatch(name):
            where = next(i for i, r in enumerate(readings) if name in r.metrics)
            raise CodecError("invalid_metric_name", f"readings[{where}].metrics name {name!r}: use {METRIC_NAME_RULE}")
        if len(known) < 100_000:  # a bound, so a device inventing names cannot grow the gateway without limit
            known.add(name)


def parse_rfc3339(value: str, where: str) -> int:
    """Epoch milliseconds from an RFC 3339 timestamp with a UTC offset (section 5.6: date-time)."""
    if not _RFC3339.fullmatch(value):
        raise CodecError("invalid_timestamp", f"{where}.ts {value!r} is not an RFC 3339 date-time with an offset "
                         f"(e.g. 2026-11-23T10:00:00Z); {TS_RULE}")  # fmt: skip
    try:  # fromisoformat takes neither a lowercase t/z nor more than 6 fraction digits
        parsed = datetime.fromisoformat(_FRACTION_TAIL.sub(r"\1", value.upper()))
    except ValueError as exc:  # e.g. month 13
        detail = f"{where}.ts {value!r} is not a valid date-time ({exc}); {TS_RULE}"
        raise CodecError("invalid_timestamp", detail) from None
    ms = (parsed - _EPOCH) // _MILLISECOND  # exact, where timestamp() * 1000 can round down by one
    if not MIN_TS_MS <= ms < MAX_TS_MS:
        raise CodecError("invalid_timestamp", f"{where}.ts {value!r} is out of range; {TS_RULE}")
    return ms


def encode(value: msgspec.Struct) -> bytes:
    return _encoder.encode(value)


def decode_batch(data: bytes) -> ReadingBatch:
    return _batch_decoder.decode(data)


class WindowAggregate(msgspec.Struct, kw_only=True):
    """One closed event-time window of one metric for one group (a device, or a label group).

    Keyed by (fleet, pipeline, step, group, metric, window_start_ms): re-emitting a window rewrites its row."""

    fleet: str
    pipeline: str
    step: str
    group: str  # "device=<id>" or "<label>=<value>[,<label>=<value>...]"
    metric: str
    window_start_ms: int
    window_end_ms: int
    count: int
    min: float
    max: float
    mean: float
    sum: float
    last: float
    percentiles: dict[str, float] = {}  # e.g. {"p95": 31.5}


class AlertEvent(msgspec.Struct, kw_only=True):
    """A transition of one device's alert state. Keyed by (fleet, pipeline, rule, device, ts_ms, state)."""

    fleet: str
    pipeline: str
    rule: str
    device: str
    state: str  # "firing" or "resolved"
    severity: str
    ts_ms: int  # event time of the reading that caused the transition
    values: dict[str, float] = {}
    message: str = ""


class Command(msgspec.Struct, kw_only=True):
    """A control signal to one device. `id` is deterministic where the sender can make it so."""

    id: str
    fleet: str
    device: str
    name: str
    params: dict[str, Any] = {}  # any JSON values, nested too
    created_ms: int
    ttl_ms: int
    source: str = "api"  # "api", "cli" or "pipeline/<name>/<rule>"
