"""Evaluation errors are logged once when first seen, then summarised on an interval, never per reading."""

from collections import Counter

from structlog.testing import capture_logs

from fleetflow.processor.errorlog import EvaluationErrorLog

KEY = ("calc", "division_by_zero")


def test_first_error_at_once_then_one_summary_per_interval() -> None:
    errors = EvaluationErrorLog("chain", interval=60.0)
    with capture_logs() as logs:
        errors.record(Counter({KEY: 500}), {KEY: "device box-1 seq 2: division by zero"}, now=0.0)
        errors.flush(now=30.0)  # not due yet
        errors.record(Counter({KEY: 500}), {}, now=40.0)
        errors.flush(now=60.0)
        errors.flush(now=61.0)  # nothing new since: silent
        errors.record(Counter({KEY: 1}), {}, now=70.0)
        errors.flush(now=80.0)  # the next one is due only at 120 s
        errors.flush(now=90.0, final=True)  # the processor stops: what is pending is reported
    assert [(e["event"], e.get("example"), e.get("errors")) for e in logs] == [
        ("expression evaluation failed", "device box-1 seq 2: division by zero", None),
        ("expression evaluation errors since the last report", None, {"calc/division_by_zero": 999}),
        ("expression evaluation errors since the last report", None, {"calc/division_by_zero": 1}),
    ]
