"""`fleetflow up` runs the application API: a key from `fleetflow api-key create`, the URL from endpoints.json,
readings sent to the gateway come back from the API; a killed API comes back on the same URL."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from fleetflow.runtime import credentials
from tests.e2e.localplatform import fleetflow_up
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart"
pytestmark = pytest.mark.e2e


def fleetflow(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "fleetflow.cli", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def get(url: str, key: str | None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError as exc:  # restarting: nothing listens for a moment
        return 0, str(exc)


def send(gateway: str, secret: bytes, device: str, seqs: range) -> None:
    now = int(time.time() * 1000)
    body = json.dumps({"readings": [{"seq": s, "ts": now - 1000 + s, "metrics": {"temp": s / 10}} for s in seqs]})
    request = urllib.request.Request(
        f"{gateway}/v1/fleets/demo/devices/{device}/telemetry", data=body.encode(), method="POST",
        headers={"Authorization": f"Bearer {credentials.device_token(secret, 'demo', device)}",
                 "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 202


def test_readings_sent_to_the_gateway_come_back_from_the_api_which_heals_on_its_url(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with fleetflow_up(data_dir, QUICKSTART) as platform:
        api = platform.endpoints["fleets"]["demo"]["api"]
        assert api.startswith("http://127.0.0.1:")
        secret = credentials.read_secret(Path(platform.endpoints["fleets"]["demo"]["secretFile"]))
        send(platform.gateway("demo"), secret, "dev-a", range(1, 51))
        send(platform.gateway("demo"), secret, "dev-b", range(1, 6))
        key = fleetflow("api-key", "create", "demo", "--scope", "read", "--data-dir", str(data_dir))

        readings = f"{api}/v1/fleets/demo/devices/dev-a/readings?from=-1h&limit=1000"
        body = wait_for(lambda: (r := get(readings, key))[0] == 200 and len(r[1]["readings"]) == 50 and r[1],
                        "all 50 readings of dev-a served", 30)  # fmt: skip
        assert [r["seq"] for r in body["readings"]] == list(range(50, 0, -1))
        assert body["readings"][0]["metrics"] == {"temp": 5.0}
        status, devices = get(f"{api}/v1/fleets/demo/devices", key)
        assert status == 200
        assert {d["device"]: d["latest"]["seq"] for d in devices["devices"]} == {"dev-a": 50, "dev-b": 5}
        assert get(f"{api}/v1/fleets/demo/devices", None)[0] == 401

        status_file = data_dir / "run" / "appapi-demo.status.json"
        old_pid = json.loads(status_file.read_text())["pid"]
        os.kill(old_pid, signal.SIGKILL)  # a child of the `fleetflow up` this test started
        wait_for(lambda: get(f"{api}/v1/fleets/demo", key)[0] == 200 and status_file.exists()
                 and json.loads(status_file.read_text())["pid"] != old_pid, "the API back on its URL", 20)  # fmt: skip

        key_id = key.split("_")[1]
        assert key_id in fleetflow("api-key", "list", "demo", "--data-dir", str(data_dir))
        fleetflow("api-key", "revoke", "demo", key_id, "--data-dir", str(data_dir))
        status, body = get(f"{api}/v1/fleets/demo", key)
        assert (status, body["error"]) == (401, "revoked_key")
        output = platform.stop()
    assert platform.process.returncode == 0, output


def request(url: str, token: str, body: Any = None) -> tuple[int, Any]:
    """GET, or POST `body` as JSON, with a bearer token."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=15) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_command_sent_through_the_api_reaches_the_device_through_the_gateway(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with fleetflow_up(data_dir, QUICKSTART) as platform:
        api, gateway = platform.endpoints["fleets"]["demo"]["api"], platform.gateway("demo")
        secret = credentials.read_secret(Path(platform.endpoints["fleets"]["demo"]["secretFile"]))
        device_token = credentials.device_token(secret, "demo", "dev-a")
        key = fleetflow("api-key", "create", "demo", "--scope", "command", "--data-dir", str(data_dir))

        status, sent = request(f"{api}/v1/fleets/demo/devices/dev-a/commands", key, {"name": "set", "params":
                               {"setpoint": 4.5}})  # fmt: skip
        assert status == 202, sent
        status, polled = request(f"{gateway}/v1/fleets/demo/devices/dev-a/commands?wait=10", device_token)
        assert status == 200, polled
        assert [(c["id"], c["params"]) for c in polled["commands"]] == [(sent["id"], {"setpoint": 4.5})]
        status, _ = request(f"{gateway}/v1/fleets/demo/devices/dev-a/commands/{sent['id']}/result", device_token,
                            {"status": "succeeded", "detail": "done"})  # fmt: skip
        assert status == 200

        status, shown = request(f"{api}/v1/fleets/demo/commands/{sent['id']}", key)
        assert status == 200, shown
        assert [t["state"] for t in shown["history"]] == ["queued", "delivered", "succeeded"]
        assert shown["source"] == f"api-key/{key.split('_')[1]}"
        assert fleetflow("command", "list", "--data-dir", str(data_dir), "demo").count(sent["source"]) == 1
        output = platform.stop()
    assert platform.process.returncode == 0, output
