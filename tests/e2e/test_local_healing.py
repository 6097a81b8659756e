"""`fleetflow up` heals itself: any child killed under load comes back by itself on the same ports, nothing
acknowledged is lost; Ctrl-C drains; one `up` per data dir."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from fleetflow.bench.run import STORED_METRIC
from fleetflow.runtime import credentials
from tests.e2e.localplatform import RunningPlatform, fleetflow_up
from tests.e2e.test_local_platform import QUICKSTART, processes_started_from, stored

pytestmark = pytest.mark.e2e

DEVICES, BATCH = 8, 20
HEAL_WITHIN = 10.0


class RetryingDevices:
    """DEVICES devices sending BATCH readings per request without pause; a request that fails (connection
    refused, 5xx) is sent again with the same bytes until the gateway acknowledges it, as a real device would."""

    def __init__(self, url: str, secret: bytes):
        self.url, self.secret = url, secret
        self.acknowledged: set[tuple[str, int]] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> "RetryingDevices":
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the device client did not stop"

    def count(self) -> int:
        return len(self.acknowledged)

    def wait_for_more(self, timeout: float, what: str) -> None:
        already = self.count()
        wait_until(lambda: self.count() > already, timeout, what)

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await asyncio.gather(*(self._device(session, f"dev-{d}") for d in range(DEVICES)))

    async def _device(self, session: aiohttp.ClientSession, name: str) -> None:
        headers = {"Authorization": f"Bearer {credentials.device_token(self.secret, 'demo', name)}",
                   "Content-Type": "application/json"}  # fmt: skip
        endpoint = f"{self.url}/v1/fleets/demo/devices/{name}/telemetry"
        batch = 0
        while not self.stop.is_set():
            now = int(time.time() * 1000)
            seqs = range(batch * BATCH + 1, (batch + 1) * BATCH + 1)
            body = json.dumps({"readings": [{"seq": s, "ts": now + s, "metrics": {"v": s}} for s in seqs]}).encode()
            while True:  # the same bytes until acknowledged; only an acknowledged batch counts
                try:
                    async with session.post(endpoint, data=body, headers=headers) as response:
                        if response.status == 202:
                            break
                        assert response.status >= 500, await response.text()
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.1)
            self.acknowledged.update((name, s) for s in seqs)
            batch += 1
            await asyncio.sleep(0.05)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `condition()` held; fails naming `what` after `timeout`."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout}s"
        time.sleep(0.05)
    return time.monotonic() - start


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def stored_by_writer(metrics_url: str) -> float:
    try:
        with urllib.request.urlopen(metrics_url, timeout=1) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(STORED_METRIC))


def listening(host_port: str) -> bool:
    host, port = host_port.rsplit(":", 1)
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) == 0


def nats_server_pid(data_dir: Path) -> int | None:
    """None between a crash and the restart."""
    config = str(data_dir / "nats" / "nats-server.conf").encode()
    found = []
    for pid in processes_started_from(data_dir):
        try:
            if config in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:  # it exited while we looked
            continue
    assert len(found) <= 1, f"more than one nats-server on {data_dir}: {found}"
    return found[0] if found else None


def service_pid(data_dir: Path, name: str) -> int | None:
    try:
        return int(json.loads((data_dir / "run" / f"{name}.status.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None  # restarting: the status file comes back once it is ready


def kill_and_time_healing(platform: RunningPlatform, child: str) -> float:
    """kill -9 `child`; seconds until a new process answers on the very ports endpoints.json names."""
    data_dir, endpoints = platform.data_dir, platform.endpoints
    if child == "nats-server":
        old = nats_server_pid(data_dir)
        assert old is not None
        ready = f"{endpoints['nats']['monitor']}/healthz?js-enabled-only=true"
        os.kill(old, signal.SIGKILL)
        return wait_until(lambda: nats_server_pid(data_dir) not in (None, old) and answers(ready), HEAL_WITHIN, child)
    old_pid = service_pid(data_dir, child)
    assert old_pid is not None
    ready = endpoints["services"][child]["health"]
    os.kill(old_pid, signal.SIGKILL)
    # A gateway's device ports must be the ones endpoints.json names; its /readyz says it reached them.
    return wait_until(lambda: service_pid(data_dir, child) not in (None, old_pid) and answers(ready), HEAL_WITHIN,
                      child)  # fmt: skip


def test_every_child_killed_under_load_heals_on_its_ports_and_nothing_acknowledged_is_lost(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with fleetflow_up(data_dir, QUICKSTART) as platform:
        secret = credentials.read_secret(Path(platform.endpoints["fleets"]["demo"]["secretFile"]))
        with RetryingDevices(platform.gateway("demo"), secret) as devices:
            wait_until(lambda: devices.count() > 0, 10, "first readings acknowledged")
            healing = {}
            for child in ("nats-server", "gateway-demo", "processor-quickstart-0", "writer-quickstart"):
                healing[child] = kill_and_time_healing(platform, child)
                devices.wait_for_more(HEAL_WITHIN, f"readings acknowledged after kill -9 of {child}")
                assert listening(platform.endpoints["fleets"]["demo"]["grpc"])
        assert json.loads((data_dir / "endpoints.json").read_text()) == platform.endpoints
        stopping = time.monotonic()
        output = platform.stop()
    # What the killed processor and writer held unacknowledged came back at once, not after the 30 s ack_wait.
    assert time.monotonic() - stopping < 15, output
    print("healed in seconds:", {child: round(s, 2) for child, s in healing.items()})
    assert platform.process.returncode == 0, output
    assert "stored >= (at least) acknowledged: yes" in output  # the killed gateway's last counts died with it
    rows = asyncio.run(stored(data_dir))  # dev-0 .. dev-7, as here
    assert len(rows) == len(set(rows))
    assert set(rows) == devices.acknowledged


def test_ctrl_c_to_the_whole_process_group_drains_and_ends_well(tmp_path: Path) -> None:
    extra = ("--simulate", "5", "--interval", "0.1")
    with fleetflow_up(tmp_path, QUICKSTART, extra=extra, new_session=True) as platform:
        metrics = platform.endpoints["services"]["writer-quickstart"]["metrics"]
        # Ctrl-C while readings flow: what is in flight then must be stored all the same.
        wait_until(lambda: stored_by_writer(metrics) > 0, 15, "simulated readings stored")
        os.killpg(platform.process.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        output, _ = platform.process.communicate(timeout=60)
    assert platform.process.returncode == 0, output
    assert "stored == acknowledged: yes" in output
    assert "did not drain" not in output
    assert not (tmp_path / "endpoints.json").exists()


def test_a_second_up_on_the_same_data_dir_is_refused_and_leaves_the_first_alone(tmp_path: Path) -> None:
    with fleetflow_up(tmp_path, QUICKSTART) as platform:
        second = subprocess.run([sys.executable, "-m", "fleetflow.cli", "up", str(QUICKSTART), "--data-dir",
                                 str(tmp_path)], capture_output=True, text=True, timeout=60)  # fmt: skip
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"in use by another fleetflow up (pid {platform.process.pid})" in second.stderr
        assert f"kill -TERM {platform.process.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        assert platform.process.poll() is None
        assert json.loads((tmp_path / "endpoints.json").read_text()) == platform.endpoints
        assert answers(platform.endpoints["services"]["gateway-demo"]["health"])
        output = platform.stop()
    assert platform.process.returncode == 0, output


def test_a_busy_nats_port_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "fleetflow.cli", "up", str(QUICKSTART), "--data-dir",
                                 str(tmp_path), "--nats-port", str(port)], capture_output=True, text=True,
                                timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert f"nats-server cannot listen on 127.0.0.1:{port} (its client port)" in result.stderr
    assert "--nats-port" in result.stderr and "Traceback" not in result.stderr
