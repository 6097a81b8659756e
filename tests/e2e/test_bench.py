"""A small `fleetflow bench` run: the report is complete and nothing was lost, duplicated or refused."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_small_bench_run_reports_everything_and_loses_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fleetflow.cli", "bench", "--devices", "5", "--batch", "20", "--duration", "3",
         "--warmup", "1", "--baseline-seconds", "1", "--json"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    state = report["end_state"]
    assert (state["rejected"], state["duplicated"], state["lost"]) == (0, 0, 0)
    assert state["acknowledged"] == state["stored"] > 0
    throughput = report["throughput"]
    assert throughput["accepted_readings_per_s"] > 0 and throughput["stored_readings_per_s"] > 0
    assert throughput["transport_publish_msgs_per_s"] > 0 and throughput["transport_consume_msgs_per_s"] > 0
    for measured in ("gateway_response", "device_to_stored"):
        assert set(report["latency_ms"][measured]) == {"p50", "p95", "p99"}
    assert {"gateway-bench", "processor-bench-0", "writer-bench", "nats-server"} <= set(report["cost"])
    assert all(cost["peak_rss_mib"] > 0 for cost in report["cost"].values())


def test_bench_refuses_a_bad_rate() -> None:
    result = subprocess.run([sys.executable, "-m", "fleetflow.cli", "bench", "--rate", "fast"],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 2
    assert "--rate 'fast': give readings per second (e.g. 50000) or max" in result.stderr


def test_a_small_api_bench_run_gets_every_answer_whole() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fleetflow.cli", "bench", "--api", "--api-readings", "100000", "--api-devices", "200",
         "--subscribers", "5", "--json"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert report["readings_stored"] == 86_400 + (100_000 - 86_400) // 199 * 199
    assert report["readings_24h"]["count"] == 86_400
    assert report["latest"]["count"] == 200
    alerts = report["alerts"]
    assert alerts["received"] == 5 * alerts["alerts"] and alerts["max_s"] > 0
    # The exit code says whether the speed targets were met: a benchmark's verdict, not this test's (the machine
    # may be shared); answering whole is.
    assert result.returncode in (0, 1), result.stderr
