"""The load generator's request bodies, built from templates for speed, carry exactly the readings the simple
construction (a dict per reading, encoded) would: what the gateway stores and the bench's checks count."""

import random

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from fleetflow.bench.load import batch_body
from fleetflow.bench.readings import CYCLE, DeviceReadings
from fleetflow.runtime import codec

T0 = 1_796_000_000_000
seqs = st.integers(min_value=0, max_value=10**12)
sizes = st.integers(min_value=1, max_value=300)


@given(seq=seqs, size=sizes, now_ms=st.integers(min_value=T0, max_value=T0 + 10**9))
def test_a_stepless_body_holds_the_readings_of_the_simple_construction(seq: int, size: int, now_ms: int) -> None:
    expected = {"readings": [{"seq": seq + i, "ts": now_ms, "metrics": {"temperature": 20.0 + i % 7, "voltage": 3.7}}
                             for i in range(size)]}  # fmt: skip
    body = batch_body(seq, size, now_ms)
    assert msgspec.json.decode(body) == expected
    assert len(codec.decode_request(body).readings) == size  # and the gateway's codec takes it


DEVICES = [DeviceReadings(f"box-{i}", random.Random(i), failing=i == 0, start_ms=T0) for i in range(2)]


@given(device=st.sampled_from(DEVICES), seq=st.integers(min_value=1, max_value=3 * CYCLE), size=sizes,
       interval_ms=st.sampled_from([0, 7, 100]))  # fmt: skip
def test_a_cold_chain_body_holds_the_devices_readings(
    device: DeviceReadings, seq: int, size: int, interval_ms: int
) -> None:
    readings = device.readings(seq, T0 + 10**6, size, interval_ms)
    expected = {"readings": [{"seq": s, "ts": ts, "metrics": m} for s, ts, m in readings]}
    assert msgspec.json.decode(device.body(seq, T0 + 10**6, size, interval_ms)) == expected
