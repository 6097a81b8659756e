"""`fleetflow query` and `fleetflow simulate` against a running `fleetflow up`: what a user sees."""

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from fleetflow.runtime import credentials
from tests.e2e.localplatform import RunningPlatform, fleetflow_up
from tests.support.cli import fleetflow, one_line_error

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e

# One-second windows without watermark delay and an alert without `for`: a handful of readings closes windows
# and fires and resolves the alert within a second.
PIPELINE = """apiVersion: fleetflow.io/v1alpha1
kind: Pipeline
metadata: {name: watch}
spec:
  fleetRef: {name: demo}
  steps:
    - name: per-second
      window: {size: 1s, metrics: [temp_c], watermarkDelay: 0s, allowedLateness: 0s, idleTimeout: 5s}
    - name: hot
      alert: {condition: "metrics.temp_c > 8.0", clear: "metrics.temp_c < 6.0", severity: critical, message: warm}
"""


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    folder = tmp_path_factory.mktemp("cli")
    (folder / "pipeline.yaml").write_text(PIPELINE)
    with fleetflow_up(folder / "data", ROOT / "examples" / "quickstart" / "fleet.yaml", folder / "pipeline.yaml") as up:
        yield up
        up.stop()


async def send(platform: RunningPlatform, device: str, temperatures: list[float]) -> None:
    secret = credentials.read_secret(Path(platform.endpoints["fleets"]["demo"]["secretFile"]))
    headers = {"Authorization": f"Bearer {credentials.device_token(secret, 'demo', device)}"}
    now = int(time.time() * 1000) - 1000 * len(temperatures)
    readings = [{"seq": i, "ts": now + 1000 * i, "metrics": {"temp_c": t}} for i, t in enumerate(temperatures)]
    url = f"{platform.gateway('demo')}/v1/fleets/demo/devices/{device}/telemetry"
    async with aiohttp.ClientSession() as session, session.post(url, json={"readings": readings}, headers=headers) as r:
        assert r.status == 202, await r.text()


def query(platform: RunningPlatform, *argv: str) -> subprocess.CompletedProcess[str]:
    return fleetflow("query", "demo", *argv, "--data-dir", platform.data_dir, "--wait", "20")


async def test_query_shows_readings_aggregates_alerts_and_commands(platform: RunningPlatform) -> None:
    await send(platform, "box-1", [4.0, 9.0, 5.0, 5.5])
    readings = query(platform, "box-1").stdout.splitlines()
    assert readings[0].split() == ["TIME", "SEQ", "METRICS"] and readings[1].split()[1:] == ["3", "temp_c=5.5"]

    aggregates = query(platform, "box-1", "--aggregates")
    header, *rows = aggregates.stdout.splitlines()
    assert header.split()[:4] == ["WINDOW", "START", "GROUP", "STEP"], aggregates.stderr
    assert rows and all(row.split()[1:4] == ["device=box-1", "per-second", "temp_c"] for row in rows)

    alerts = [json.loads(line) for line in query(platform, "--alerts", "--json").stdout.splitlines()]
    deadline = time.monotonic() + 20  # the resolution comes a reading after the firing
    while [a["state"] for a in alerts] != ["resolved", "firing"] and time.monotonic() < deadline:
        alerts = [json.loads(line) for line in query(platform, "--alerts", "--json").stdout.splitlines()]
    assert [(a["device"], a["rule"], a["state"]) for a in alerts] == [("box-1", "hot", "resolved"),
                                                                       ("box-1", "hot", "firing")]  # fmt: skip

    sent = fleetflow("command", "send", "demo", "box-1", "set", "setpoint=4", "--json", "--data-dir", platform.data_dir)
    command_id = json.loads(sent.stdout)["id"]
    commands = query(platform, "box-1", "--commands").stdout.splitlines()
    assert commands[0].split() == ["ID", "DEVICE", "NAME", "STATE", "CREATED", "SOURCE"]
    assert commands[1].split()[:4] == [command_id, "box-1", "set", "queued"]


def test_query_of_a_device_with_nothing_stored_says_so(platform: RunningPlatform) -> None:
    result = fleetflow("query", "demo", "nobody", "--alerts", "--data-dir", platform.data_dir)
    assert result.returncode == 0 and result.stdout == ""
    assert "no alerts of device 'nobody' of fleet 'demo' in pipeline watch's store" in result.stderr


def test_query_of_a_mistyped_fleet_names_the_known_ones(platform: RunningPlatform) -> None:
    one_line_error(fleetflow("query", "dmeo", "box-1", "--data-dir", platform.data_dir), 2,
                   "no fleet 'dmeo'", "known here: demo")  # fmt: skip


def test_simulate_with_the_http_url_for_grpc_fails_fast_naming_the_grpc_endpoint(platform: RunningPlatform) -> None:
    grpc = platform.endpoints["fleets"]["demo"]["grpc"]
    http_port = platform.gateway("demo").rsplit(":", 1)[1]
    started = time.monotonic()
    result = fleetflow("simulate", "--fleet", "demo", "--protocol", "grpc", "--url", f"127.0.0.1:{http_port}",
                       "--duration", "30", "--data-dir", platform.data_dir)  # fmt: skip
    one_line_error(result, 1, "no fleetflow grpc gateway at", f"grpc endpoint is {grpc}")
    assert time.monotonic() - started < 20


def test_ctrl_c_in_simulate_prints_the_summary_and_exits_130(platform: RunningPlatform) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "fleetflow.cli", "simulate", "--fleet", "demo", "--devices", "2", "--interval", "0.2",
         "--duration", "60", "--data-dir", str(platform.data_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        stored = query(platform, "sim-0000")  # waits until the run is under way: its readings are stored
        assert stored.returncode == 0 and "temp_c=" in stored.stdout, stored.stderr
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=45)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert "acknowledged" in out and out.startswith("sent "), out
