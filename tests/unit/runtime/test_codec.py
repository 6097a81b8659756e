"""The reading codec: what devices may send, and the batch message that travels through JetStream."""

import msgspec
import pytest

from fleetflow.runtime import codec
from fleetflow.runtime.codec import CodecError, Reading, ReadingBatch


def test_request_decodes_numbers_and_both_timestamp_forms() -> None:
    request = codec.decode_request(
        b'{"readings": [{"seq": 1, "ts": 1763900000000, "metrics": {"t": 21, "v": 3.5}},'
        b' {"seq": 2, "ts": "2026-11-23T10:00:00+01:00", "metrics": {"t": 1e3}}]}'
    )
    first, second = request.readings
    assert (first.seq, first.ts, first.metrics) == (1, 1763900000000, {"t": 21.0, "v": 3.5})
    assert isinstance(first.metrics["t"], float)
    assert codec.parse_rfc3339(str(second.ts), "readings[1]") == 1795424400000


@pytest.mark.parametrize(
    ("body", "reason", "detail"),
    [
        (b"{", "malformed_json", "body is not valid JSON"),
        (b'{"readings": [{"seq": 1, "ts": 1763900000000, "metrics": {"t": NaN}}]}', "malformed_json", "invalid"),
        # Python's json.dumps writes these for float("nan") and the infinities: say so, and what is accepted.
        (b'{"readings": [{"seq": 1, "ts": 1763900000000, "metrics": {"t": NaN}}]}', "malformed_json",
         "NaN is not a JSON number; metric values must be finite numbers"),
        (b'{"readings": [{"seq": 1, "ts": 1763900000000, "metrics": {"t": -Infinity}}]}', "malformed_json",
         "Infinity is not a JSON number; metric values must be finite numbers"),
        (b'{"readings": [{"seq": 1, "ts": 1763900000000, "metrics": {"t": 1e400}}]}', "non_finite_number",
         "must be finite"),
        (b'{"readings": [{"seq": 1, "ts": 17639000000000, "metrics": {"t": 1}}]}', "invalid_timestamp",
         "Expected `int` <= 4102444799999 - at `$.readings[0].ts`"),
        (b'{"readings": [{"seq": -3, "ts": 1763900000000, "metrics": {"t": 1}}]}', "invalid_reading",
         "seq must be an integer from 0 to 9223372036854775807"),
        (b'{"readings": [{"seq": 9223372036854775808, "ts": 1763900000000, "metrics": {"t": 1}}]}', "invalid_reading",
         "seq must be an integer from 0 to 9223372036854775807"),
        (b'{"readings": [{"seq": 1, "ts": 1763900000000, "metrics": {"t": 1, "t": 2}}]}', "duplicate_key",
         "key 't' appears twice"),
        (b'{"readings": [{"seq": 1, "ts": 1763900000000, "ts": 1763900000001, "metrics": {"t": 1}}]}',
         "duplicate_key", "key 'ts' appears twice"),
        (b'{"readings": [{"seq": 1, "ts": 1763900000000, "metrics": {"t": "hot"}}]}', "invalid_reading",
         "Expected `float`, got `str` - at `$.readings[0].metrics[...]`"),
        (b'{"readings": [{"seq": 1, "ts": 1763900000000, "metrics": {"t": true}}]}', "invalid_reading",
         "Expected `float`, got `bool`"),
        (b'{"reading": []}', "invalid_reading", "Object contains unknown field `reading`"),
    ],
)  # fmt: skip
def test_bad_requests_name_reason_and_place(body: bytes, reason: str, detail: str) -> None:
    with pytest.raises(CodecError) as caught:
        codec.decode_request(body)
    assert caught.value.reason == reason
    assert detail in caught.value.detail


@pytest.mark.parametrize(
    ("text", "detail"),
    [("2026-11-23 10:00", "is not an RFC 3339 date-time"), ("2026-11-23T10:00:00", "is not an RFC 3339 date-time"),
     ("soon", "is not an RFC 3339 date-time"), ("20261123T100000Z", "is not an RFC 3339 date-time"),
     ("2026-W47-1T10:00:00Z", "is not an RFC 3339 date-time"), ("2026-11-23T10:00Z", "is not an RFC 3339"),
     ("2026-11-23T10:00:00Z\n", "is not an RFC 3339"), ("2026-13-01T00:00:00Z", "is not a valid date-time"),
     ("1970-01-01T00:00:00Z", "is out of range")],
)  # fmt: skip
def test_rfc3339_errors(text: str, detail: str) -> None:
    with pytest.raises(CodecError, match=detail):
        codec.parse_rfc3339(text, "readings[0]")


def test_metric_names_are_checked_once_per_distinct_name() -> None:
    known: set[str] = set()
    good = codec.decode_request(b'{"readings": [{"seq": 1, "ts": 1763900000000, "metrics": {"temp_c": 1}}]}')
    codec.check_metric_names(good.readings, known)
    assert known == {"temp_c"}
    bad = codec.decode_request(
        b'{"readings": [{"seq": 1, "ts": 1763900000000, "metrics": {"ok": 1}},'
        b' {"seq": 2, "ts": 1763900000000, "metrics": {"9lives": 1}}]}'
    )
    with pytest.raises(CodecError, match=r"readings\[1\].metrics name '9lives'"):
        codec.check_metric_names(bad.readings, known)


def test_batch_round_trips_with_compact_readings() -> None:
    batch = ReadingBatch(fleet="f", device="d", readings=[Reading(1, 1763900000000, {"t": 1.5})], received_ms=5)
    data = codec.encode(batch)
    assert b'"readings":[[1,1763900000000,{"t":1.5}]]' in data
    assert codec.decode_batch(data) == batch
    with pytest.raises(msgspec.ValidationError):
        codec.decode_batch(b'{"fleet": "f"}')


@pytest.mark.parametrize(
    ("text", "ms"),
    [("2026-11-23T10:00:00Z", 1795428000000), ("2026-11-23t10:00:00.123456789z", 1795428000123),
     ("2026-11-23 11:00:00.001+01:00", 1795428000001), ("2026-11-23T09:30:00.5-00:30", 1795428000500)],
)  # fmt: skip
def test_rfc3339_forms_of_section_5_6_are_exact_to_the_millisecond(text: str, ms: int) -> None:
    assert codec.parse_rfc3339(text, "readings[0]") == ms


def test_a_string_value_that_looks_like_a_key_is_no_duplicate() -> None:
    request = codec.decode_request(b'{"readings": [{"seq": 1, "ts": "a\\":", "metrics": {"t": 1}}]}')
    assert request.readings[0].ts == 'a":'
