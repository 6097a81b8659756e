"""Where each output goes and under which id."""

import json
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from fleetflow.processor import records
from fleetflow.runtime import codec
from fleetflow.runtime.codec import Reading, ReadingBatch
from tests.unit.processor.builders import NOW, batch, engine

STEPS = [
    {"name": "w", "window": {"size": "10s", "groupBy": ["site"]}},
    {"name": "hot", "alert": {"condition": "metrics.t > 8.0"}},
    {"name": "fan", "command": {"condition": "metrics.t > 8.0", "command": "fan_on", "ttl": "30d"}},
]
LABELS = [{"match": "^box", "labels": {"site": "north.depot 1"}}]


def test_subjects_ids_and_record_headers() -> None:
    e = engine(STEPS, LABELS)
    e.process(batch("box-1", (1, 0, {"t": 1.0})), NOW)
    out = e.process(batch("box-1", (2, 10000, {"t": 9.0})), NOW)
    found = {(m.record, m.subject, m.msg_id) for m in records.messages("cold", "chain", "cold/box-1/2-2", out)}
    assert found == {
        ("readings", "ff.cold.pl.chain.readings.box-1", "chain/readings/cold/box-1/2-2"),
        ("aggregates", "ff.cold.pl.chain.aggregates.site=north_depot_1",
         f"chain/aggregates/w/site=north.depot 1/t/{out.aggregates[0].window_start_ms}"),
        ("alerts", "ff.cold.pl.chain.alerts.box-1", f"chain/alerts/hot/box-1/{out.alerts[0].ts_ms}/firing"),
        ("alert-events", "ff.cold.alert.box-1", f"chain/alerts/hot/box-1/{out.alerts[0].ts_ms}/firing"),
        ("commands", "ff.cold.cmd.box-1", out.commands[0].id),
    }  # fmt: skip


def test_late_readings_are_their_own_record() -> None:
    e = engine([{"name": "w", "window": {"size": "10s"}}])
    e.process(batch("box-1", (1, 20000, {"t": 1.0})), NOW)
    out = e.process(batch("box-1", (2, 1000, {"t": 2.0})), NOW)
    [late] = [m for m in records.messages("cold", "chain", "in-1", out, {"traceparent": "00-ab-cd-01"}) if
              m.record == "late"]  # fmt: skip
    assert (late.subject, late.msg_id) == ("ff.cold.pl.chain.late.box-1", "chain/late/w/in-1")
    assert late.headers == {"traceparent": "00-ab-cd-01", "Nats-Msg-Id": "chain/late/w/in-1",
                            "Fleetflow-Record": "late"}  # fmt: skip


def test_a_stepless_pipeline_sends_its_input_bytes_and_a_pipeline_with_steps_encodes_its_own() -> None:
    received = batch("box-1", (1, 0, {"t": 1.0}), (2, 1000, {"t": 2.5}))
    data = b' {"fleet": "cold", "device": "box-1", "readings": [[1, 1700000000000, {"t": 1}]], "received_ms": 0} '
    stepless = engine([]).process(received, NOW)
    [forwarded] = records.messages("cold", "chain", "in-1", stepless, None, (received, data))
    assert forwarded.data is data
    derived = engine([{"name": "d", "derive": {"metrics": {"u": "metrics.t * 2.0"}}}]).process(received, NOW)
    [encoded] = records.messages("cold", "chain", "in-1", derived, None, (received, data))
    assert encoded.data == codec.encode(derived.readings[0]) != data


NAMES = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
READINGS = st.builds(
    Reading,
    st.integers(0, codec.MAX_SEQ),
    st.integers(codec.MIN_TS_MS, codec.MAX_TS_MS - 1),
    st.dictionaries(NAMES, st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=4),
)
BATCHES = st.builds(
    ReadingBatch,
    fleet=NAMES,
    device=NAMES,
    readings=st.lists(READINGS, max_size=5),
    received_ms=st.integers(codec.MIN_TS_MS, codec.MAX_TS_MS - 1),
)


@given(BATCHES)
def test_a_forwarded_gateway_batch_is_byte_for_byte_what_encoding_it_again_gave(sent: ReadingBatch) -> None:
    """What the gateway publishes is codec.encode of a batch: decoding and encoding it again changes no byte."""
    data = codec.encode(sent)
    assert codec.encode(codec.decode_batch(data)) == data


def integral(value: float) -> float | int:
    """2.0 as 2, as a device may write it."""
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


@given(BATCHES, st.sampled_from([None, 0, 2]), st.booleans(), st.booleans(), st.booleans())
def test_a_forwarded_batch_in_any_other_json_form_is_stored_as_its_encoding_would_be(
    sent: ReadingBatch, indent: int | None, sort_keys: bool, ascii_only: bool, extra_field: bool
) -> None:
    """Whitespace, key order, escapes, integral metric values written as ints and unknown fields are lost in
    decoding: the writer decodes the forwarded bytes to the very batch it would have decoded from the encoding."""
    document: dict[str, Any] = {
        "readings": [[r.seq, r.ts, {k: integral(v) for k, v in r.metrics.items()}] for r in sent.readings],
        "device": sent.device,
        "received_ms": sent.received_ms,
        "fleet": sent.fleet,
    }
    if extra_field:
        document["note"] = "from another gateway version"
    data = json.dumps(document, indent=indent, sort_keys=sort_keys, ensure_ascii=ascii_only).encode()
    writer = msgspec.json.Decoder(ReadingBatch)  # as writer/persist.py decodes readings messages
    assert writer.decode(data) == writer.decode(codec.encode(codec.decode_batch(data))) == sent
