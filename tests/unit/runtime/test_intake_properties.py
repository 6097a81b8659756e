"""Property: every generated body is either accepted with exactly the readings it holds, or refused with a 4xx
that names one of the rules it breaks (the reference in tests/support/telemetry_bodies.py lists them)."""

from hypothesis import HealthCheck, given, settings

from fleetflow.api import DeviceFleet
from fleetflow.gateway.errors import Rejection
from fleetflow.gateway.ingest import BatchValidator
from tests.support.telemetry_bodies import bodies, expected

FLEET = DeviceFleet.model_validate({"metadata": {"name": "demo"}, "spec": {"gateway": {"maxBatchReadings": 10}}})
VALIDATOR = BatchValidator(FLEET)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(bodies())
def test_every_body_is_accepted_whole_or_refused_naming_a_rule_it_breaks(body: bytes) -> None:
    want = expected(body, max_readings=10, max_body=FLEET.spec.gateway.max_body_bytes)
    try:
        batch = VALIDATOR.validate("dev-1", body, received_ms=1)
    except Rejection as rejection:
        assert 400 <= rejection.status < 500
        assert rejection.reason in want.refusals, (body, rejection.reason, rejection.detail, want)
        assert rejection.detail
        return
    assert not want.refusals, (body, want)
    assert tuple((r.seq, r.ts) for r in batch.readings) == want.readings
