"""The foundation's promise: `fleetflow up`, HTTP ingest, every acknowledged reading stored exactly once."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from fleetflow.api import Pipeline
from fleetflow.local.platform import LocalPlatform
from fleetflow.local.resources import load_resources
from fleetflow.runtime import credentials
from fleetflow.writer.stores import ReadingQuery
from fleetflow.writer.stores.sqlite import SqliteStore
from tests.e2e.localplatform import fleetflow_up
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart"
pytestmark = pytest.mark.e2e

DEVICES, BATCHES, BATCH = 8, 6, 25


async def send_fleet(url: str, secret: bytes, first_seq: int) -> int:
    """DEVICES devices x BATCHES batches of BATCH readings; every other batch is sent twice (a retry)."""

    async def device(session: aiohttp.ClientSession, name: str) -> int:
        headers = {"Authorization": f"Bearer {credentials.device_token(secret, 'demo', name)}"}
        endpoint = f"{url}/v1/fleets/demo/devices/{name}/telemetry"
        now = int(time.time() * 1000)  # within the sink's TTL, which the writer enforces
        for b in range(BATCHES):
            seqs = range(first_seq + b * BATCH, first_seq + (b + 1) * BATCH)
            body = {"readings": [{"seq": s, "ts": now + s - first_seq, "metrics": {"v": s}} for s in seqs]}
            for _ in range(2 if b % 2 else 1):
                async with session.post(endpoint, json=body, headers=headers) as response:
                    assert response.status == 202, await response.text()
        return BATCHES * BATCH

    async with aiohttp.ClientSession() as session:
        return sum(await asyncio.gather(*(device(session, f"dev-{d}") for d in range(DEVICES))))


async def stored(data_dir: Path) -> list[tuple[str, int]]:
    pipeline = Pipeline.model_validate({"metadata": {"name": "quickstart"}, "spec": {"fleetRef": {"name": "demo"}}})
    store = SqliteStore(data_dir / "store.sqlite3", pipeline.spec.sink.tables, 86400 * 365 * 100)
    await store.open()
    rows = []
    try:
        for d in range(DEVICES):
            page = await store.readings(ReadingQuery("demo", f"dev-{d}", limit=100_000))
            rows.extend((r.device, r.seq) for r in page.items)
    finally:
        await store.close()
    return rows


def test_every_acknowledged_reading_is_stored_once_and_survives_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with fleetflow_up(data_dir, QUICKSTART) as platform:
        secret = credentials.read_secret(Path(platform.endpoints["fleets"]["demo"]["secretFile"]))
        sent = asyncio.run(send_fleet(platform.gateway("demo"), secret, first_seq=1))
        output = platform.stop()
    assert platform.process.returncode == 0, output
    assert f"accepted by the gateways: {sent:,} readings" in output
    assert f"stored {sent:,} readings in this run" in output
    rows = asyncio.run(stored(data_dir))
    assert len(rows) == len(set(rows)) == DEVICES * BATCHES * BATCH

    with fleetflow_up(data_dir, QUICKSTART) as platform:
        assert len(asyncio.run(stored(data_dir))) == DEVICES * BATCHES * BATCH
        more = asyncio.run(send_fleet(platform.gateway("demo"), secret, first_seq=10_000))
        output = platform.stop()
    assert platform.process.returncode == 0, output
    assert f"stored {more:,} readings in this run, {sent + more:,} in total" in output
    assert len(asyncio.run(stored(data_dir))) == 2 * DEVICES * BATCHES * BATCH


def processes_started_from(data_dir: Path) -> list[int]:
    """Live processes whose command line names `data_dir` (nats-server and the services name their config)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            started_here = proc.name.isdigit() and str(data_dir).encode() in (proc / "cmdline").read_bytes()
            if started_here and (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(proc.name))
        except OSError:  # it exited while we looked
            continue
    return found


def test_killing_fleetflow_up_stops_every_process_it_started(tmp_path: Path) -> None:
    """SIGKILL (or a closed terminal) gives `fleetflow up` no chance to stop its children; they go all the same."""
    data_dir = tmp_path / "data"
    with fleetflow_up(data_dir, QUICKSTART) as platform:
        children = [pid for pid in processes_started_from(data_dir) if pid != platform.process.pid]
        assert len(children) == 5, children  # nats-server, gateway, processor, writer, application API
        platform.process.kill()
        platform.process.wait()
        deadline = time.monotonic() + 30
        while left := [pid for pid in children if pid in processes_started_from(data_dir)]:
            assert time.monotonic() < deadline, f"still running after fleetflow up was killed: {left}"
            time.sleep(0.1)


def test_simulated_devices_end_with_stored_equal_to_acknowledged(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fleetflow.cli", "up", str(QUICKSTART), "--data-dir", str(tmp_path),
         "--simulate", "5", "--duration", "4", "--interval", "0.2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stored == acknowledged: yes" in result.stdout
    assert "re-sent as retries" in result.stdout
    assert not (tmp_path / "endpoints.json").exists()


def test_status_and_query_commands_against_a_running_platform(tmp_path: Path) -> None:
    with fleetflow_up(tmp_path, QUICKSTART) as platform:
        secret = credentials.read_secret(Path(platform.endpoints["fleets"]["demo"]["secretFile"]))
        asyncio.run(send_fleet(platform.gateway("demo"), secret, first_seq=1))
        status = subprocess.run([sys.executable, "-m", "fleetflow.cli", "status", "--data-dir", str(tmp_path)],
                                capture_output=True, text=True, timeout=30)  # fmt: skip
        assert status.returncode == 0, status.stdout + status.stderr
        assert "gateway-demo" in status.stdout and "ready" in status.stdout
        assert "ff-demo-telemetry" in status.stdout and "consumer processor-quickstart-0" in status.stdout
        platform.stop()
    query = subprocess.run(
        [sys.executable, "-m", "fleetflow.cli", "query", "demo", "dev-3", "--data-dir", str(tmp_path),
         "--limit", "2", "--json"], capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert query.returncode == 0, query.stderr
    lines = [json.loads(line) for line in query.stdout.splitlines()]
    assert [line["seq"] for line in lines] == [BATCHES * BATCH, BATCHES * BATCH - 1]
    assert lines[0]["metrics"] == {"v": float(BATCHES * BATCH)}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("apiVersion: fleetflow.io/v1alpha1\nkind: DeviceFleet\nmetadata: {name: demo}\nspec:\n  gateway: {replicas: -2}\n",
         "DeviceFleet/demo: spec.gateway.replicas = -2: Input should be greater than or equal to 0"),
        ("kind: [unclosed", "not valid YAML"),
        ("apiVersion: fleetflow.io/v1alpha1\nkind: Pipeline\nmetadata: {name: p}\nspec: {fleetRef: {name: nope}}\n",
         "spec.fleetRef.name = 'nope': no such DeviceFleet"),
        ("apiVersion: fleetflow.io/v1alpha1\nkind: Pipeline\nmetadata: {name: p}\nspec:\n  fleetRef: {name: demo}\n"
         "  steps:\n  - name: hot\n    filter: {condition: 'metrics.temp >'}\n",
         "spec.steps[0].filter.condition: 'metrics.temp >' at 1:"),
    ],
)  # fmt: skip
def test_invalid_yaml_is_refused_naming_file_field_and_problem(tmp_path: Path, content: str, expected: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    paths = [str(bad)] if "Pipeline" not in content else [str(QUICKSTART / "fleet.yaml"), str(bad)]
    result = subprocess.run([sys.executable, "-m", "fleetflow.cli", "up", *paths, "--data-dir", str(tmp_path / "d")],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 2
    assert expected in result.stderr
    if "Pipeline" not in content:
        assert str(bad) in result.stderr


def test_a_run_after_a_killed_one_stores_what_that_left_first_and_counts_only_its_own(tmp_path: Path) -> None:
    """A `fleetflow up` killed while its writer was behind leaves acknowledged readings in JetStream. The next run
    stores them before its gateways accept anything, so its summary counts exactly what it acknowledged itself."""
    data_dir = tmp_path / "data"
    with fleetflow_up(data_dir, QUICKSTART, new_session=True) as platform:
        secret = credentials.read_secret(Path(platform.endpoints["fleets"]["demo"]["secretFile"]))
        writer = json.loads((data_dir / "run" / "writer-quickstart.status.json").read_text())["pid"]
        os.kill(writer, signal.SIGSTOP)  # behind: what is acknowledged from now on waits in JetStream
        sent = asyncio.run(send_fleet(platform.gateway("demo"), secret, first_seq=1))
        os.kill(writer, signal.SIGKILL)
        os.killpg(platform.process.pid, signal.SIGKILL)  # no drain, as a closed terminal or an OOM kill
        platform.process.wait()
        wait_for(lambda: not processes_started_from(data_dir), "the killed run's processes gone", 30)
    assert asyncio.run(stored(data_dir)) == []

    with fleetflow_up(data_dir, QUICKSTART) as platform:
        # endpoints.json is written once the gateways accept: by then the leftovers are stored.
        assert len(asyncio.run(stored(data_dir))) == sent
        more = asyncio.run(send_fleet(platform.gateway("demo"), secret, first_seq=10_000))
        output = platform.stop()
    assert platform.process.returncode == 0, output
    assert f"stored {more:,} readings in this run, {sent + more:,} in total" in output
    assert "stored == acknowledged: yes" in output


async def test_the_stores_are_counted_before_any_gateway_is_started(tmp_path: Path) -> None:
    """What `fleetflow up` stores in a run is its count after minus its count before: a device that reads
    the gateway's port early must not find the gateway up before that count is taken."""
    platform = LocalPlatform(load_resources([QUICKSTART]), tmp_path / "data")
    started_when_counted: list[list[str]] = []

    async def before_intake() -> None:
        started_when_counted.append([s.name for s in platform.services if s.process is not None])

    try:
        await platform.start(before_intake=before_intake)
        assert all(s.process is not None for s in platform.services)
    finally:
        await platform.stop()
    assert started_when_counted == [[]]
