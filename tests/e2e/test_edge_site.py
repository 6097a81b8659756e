"""An edge site and its hub as real processes on this machine (docs/edge.md): the hub's `fleetflow up` platform,
the site's `fleetflow edge up` platform whose NATS is a leaf node of the hub's through a TCP proxy the test cuts,
real gateways, processors and writers. While cut off the site keeps accepting, alerting and commanding; once the
link is back the centre holds every acknowledged batch exactly once, in each device's order, and its windows equal
those of an uninterrupted run. The site's disk budget refuses or drops oldest, as configured."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.local.edgesite import EdgePlatform
from fleetflow.local.platform import LocalPlatform
from fleetflow.local.ports import free_port
from fleetflow.local.resources import ResourceSet, load_resources, site_resources
from fleetflow.local.sitelinks import leaf_links
from fleetflow.local.sitelogins import site_password_file
from fleetflow.processor.compiler import compile_pipeline
from fleetflow.processor.engine import Engine
from fleetflow.runtime import credentials, subjects
from fleetflow.runtime.codec import Reading, ReadingBatch, WindowAggregate
from fleetflow.writer.stores import ReadingQuery
from fleetflow.writer.stores.sqlite import SqliteStore
from tests.support.linkproxy import LinkProxy

pytestmark = pytest.mark.e2e
FLEET, SITE, EDGE, CENTRAL = "yard", "north", "yard-edge", "yard-central"
DEVICES = ("crane-1", "crane-2")
PER_REQUEST = 10
BASE = (int(time.time() * 1000) // 10_000) * 10_000 - 60_000  # event time, taken at import: the commands live 6 h


def write_yaml(folder: Path, site: dict[str, Any]) -> Path:
    fleet = {"apiVersion": "fleetflow.io/v1alpha1", "kind": "DeviceFleet", "metadata": {"name": FLEET},
             "spec": {"streams": {"partitions": 2}, "sites": [{"name": SITE, "pipelines": [EDGE], **site}]}}  # fmt: skip
    edge = pipeline(EDGE, [
        {"name": "too-hot", "alert": {"condition": "metrics.temp_c > 8.0", "clear": "metrics.temp_c < 6.0"}},
        {"name": "cool-down", "command": {"condition": "metrics.temp_c > 8.0", "command": "cool", "ttl": "6h",
                                          "cooldown": "1h"}},
        {"name": "minutes", "window": {"size": "1m", "metrics": ["temp_c"], "watermarkDelay": "0s",
                                       "allowedLateness": "0s", "idleTimeout": "10m"}},
    ])  # fmt: skip
    central = pipeline(CENTRAL, [
        {"name": "tens", "window": {"size": "10s", "metrics": ["temp_c"], "watermarkDelay": "0s",
                                    "allowedLateness": "0s", "idleTimeout": "10m"}},
    ])  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fleet.yaml").write_text(yaml.safe_dump_all([fleet, edge, central]))
    return folder


def pipeline(name: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "fleetflow.io/v1alpha1", "kind": "Pipeline", "metadata": {"name": name},
            "spec": {"fleetRef": {"name": FLEET}, "steps": steps, "sink": {"kind": "sqlite"}}}  # fmt: skip


def reading(device: str, seq: int) -> Reading:
    """Hot (over 8 °C) from seq 40 to 59, when the link is down; each crane a little different."""
    temp = 9.5 if 40 <= seq < 60 else 4.0 + (seq % 5) / 10 + DEVICES.index(device) / 100
    return Reading(seq, BASE + seq * 1000, {"temp_c": temp})


async def poll(what: str, check: Callable[[], Awaitable[Any]], timeout: float = 60) -> Any:
    """Ask `check` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (found := await check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s (last: {found!r})"
        await asyncio.sleep(0.2)
    return found


class Devices:
    """HTTP devices of the site, with tokens from the site's fleet secret."""

    def __init__(self, site: EdgePlatform, session: aiohttp.ClientSession):
        self.site, self.session = site, session
        self.secret = credentials.ensure_local_secret(site.data_dir, FLEET)
        self.acknowledged: dict[str, list[int]] = {device: [] for device in DEVICES}

    async def send(self, device: str, first: int, count: int = PER_REQUEST) -> tuple[int, dict[str, Any]]:
        readings = [reading(device, seq) for seq in range(first, first + count)]
        body = {"readings": [{"seq": r.seq, "ts": r.ts, "metrics": r.metrics} for r in readings]}
        headers = {"Authorization": f"Bearer {credentials.device_token(self.secret, FLEET, device)}"}
        url = f"{self.site.gateway_url(self.site.fleet)}/v1/fleets/{FLEET}/devices/{device}/telemetry"
        async with self.session.post(url, json=body, headers=headers) as response:
            answer = await response.json()
            if response.status == 202:
                self.acknowledged[device] += [r.seq for r in readings]
            return response.status, answer

    async def send_range(self, first: int, last: int) -> None:
        for start in range(first, last, PER_REQUEST):
            for device in DEVICES:
                status, answer = await self.send(device, start)
                assert status == 202, answer


async def open_store(path: Path, pipeline: Pipeline) -> SqliteStore:
    store = SqliteStore(path, pipeline.spec.sink.tables, 86400 * 365)
    await store.open()
    return store


async def stored_seqs(path: Path, pipeline: Pipeline) -> dict[str, list[int]]:
    store = await open_store(path, pipeline)
    try:
        pages = {d: await store.readings(ReadingQuery(FLEET, d, limit=10_000)) for d in DEVICES}
        return {device: sorted(r.seq for r in page.items) for device, page in pages.items()}
    finally:
        await store.close()


async def telemetry_in_stream(platform: LocalPlatform) -> list[tuple[str, str]]:
    """(device, message id) of every batch in the platform's telemetry stream, in stream order."""
    nc = await platform._connect()
    try:
        js = nc.jetstream()
        sub = await js.subscribe(f"ff.{FLEET}.tm.>", stream=subjects.telemetry_stream(FLEET), ordered_consumer=True)
        total = (await js.stream_info(subjects.telemetry_stream(FLEET))).state.messages
        found = []
        for _ in range(total):
            message = await sub.next_msg(timeout=5)
            found.append((message.subject.rsplit(".", 1)[-1], (message.headers or {})["Nats-Msg-Id"]))
        return found
    finally:
        await nc.close()


def first_seq_of(message_id: str) -> int:
    """`<fleet>/<device>/<first>-<last>/<digest>` (subjects.batch_id)."""
    return int(message_id.split("/")[2].split("-")[0])


def uninterrupted_windows(fleet: DeviceFleet, pipeline: Pipeline, last: int) -> dict[tuple[Any, ...], Any]:
    """What a pipeline's windows are when every batch arrives at once, in order, with no outage."""
    engine = Engine(compile_pipeline(pipeline, fleet), now_ms=int(time.time() * 1000))
    found: list[WindowAggregate] = []
    for start in range(0, last, PER_REQUEST):
        for device in DEVICES:
            readings = [reading(device, seq) for seq in range(start, start + PER_REQUEST)]
            out = engine.process(ReadingBatch(fleet=FLEET, device=device, readings=readings, received_ms=0), 0)
            found += out.aggregates
    return {window_key(a): window_values(a) for a in found}


def window_key(a: WindowAggregate) -> tuple[Any, ...]:
    return (a.step, a.group, a.metric, a.window_start_ms)


def window_values(a: WindowAggregate) -> tuple[Any, ...]:
    return (a.count, a.min, a.max, a.sum, a.last)


@contextlib.asynccontextmanager
async def running_hub(tmp_path: Path, forward: dict[str, Any]) -> AsyncIterator[tuple[LocalPlatform, ResourceSet]]:
    resources = load_resources([write_yaml(tmp_path / "yaml", {"forward": forward})])
    platform = LocalPlatform(resources, tmp_path / "hub")
    await platform.start()
    try:
        yield platform, resources
    finally:
        await platform.stop(drain_timeout=30)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[tuple[LocalPlatform, ResourceSet]]:
    async with running_hub(tmp_path, {"readings": True, "records": ["alerts"]}) as running:
        yield running


async def start_site(resources: ResourceSet, data_dir: Path, hub_url: str, password: str) -> EdgePlatform:
    fleet = resources.fleets[FLEET]
    site = EdgePlatform(site_resources(resources, FLEET, SITE), data_dir, fleet.spec.sites[0], hub_url, password)
    await site.start()
    return site


async def test_a_cut_off_site_keeps_deciding_and_the_centre_gets_everything_once_in_order(
    tmp_path: Path, hub: tuple[LocalPlatform, ResourceSet]
) -> None:
    centre, resources = hub
    assert centre.leafnode_url is not None
    proxy = LinkProxy(int(centre.leafnode_url.rsplit(":", 1)[1]))
    await proxy.start()
    password = site_password_file(centre.data_dir, FLEET, SITE).read_text().strip()
    site = await start_site(resources, tmp_path / "site", proxy.url, password)
    central, edge = resources.pipelines[CENTRAL], resources.pipelines[EDGE]
    try:
        async with aiohttp.ClientSession() as session:
            devices = Devices(site, session)
            await poll("the site's link to the hub", site.link_up)
            await devices.send_range(0, 30)
            before = await poll("the centre storing what the site forwarded while linked",
                                lambda: _all_stored(centre.store_path(central), central, 30))  # fmt: skip
            assert before

            proxy.cut()
            await poll("the site noticing the cut", lambda: _not(site.link_up))
            await devices.send_range(30, 80)  # hot from 40 to 59: the site alone must alert and command
            firing = await poll("an alert for every device at the site while cut off",
                                lambda: _firing_devices(site.store_path(edge), edge))  # fmt: skip
            assert firing == set(DEVICES)
            commands = await poll("commands to the site's devices while cut off", lambda: _commands(site))
            assert sorted(commands) == sorted(DEVICES)
            isolated = await stored_seqs(centre.store_path(central), central)
            assert all(max(seqs) < 30 for seqs in isolated.values()), "readings crossed a cut link"
            state = await site.site_state()
            assert not state.link_up and state.batches == 16 and state.removed == 0, state

            proxy.restore()
            restored = time.monotonic()
            await poll("the centre catching up", lambda: _all_stored(centre.store_path(central), central, 80))
            print(f"catch-up: the centre stored the {state.batches} batches held at the site "
                  f"{time.monotonic() - restored:.1f}s after the link returned")  # fmt: skip
        batches = await telemetry_in_stream(centre)
        ids = [message_id for _, message_id in batches]
        assert len(ids) == len(set(ids)) == 16, "each acknowledged batch once in the centre's stream"
        for device in DEVICES:
            firsts = [first_seq_of(i) for d, i in batches if d == device]
            assert firsts == list(range(0, 80, PER_REQUEST)), f"{device}: batches out of order: {firsts}"
        assert await stored_seqs(centre.store_path(central), central) == devices.acknowledged

        expected = uninterrupted_windows(resources.fleets[FLEET], central, 80)
        got = await poll("the centre's windows", lambda: _windows(centre.store_path(central), central, len(expected)))
        assert {k: v for k, v in got.items() if k in expected} == expected
        forwarded = await poll(
            "the site's alerts in the centre", lambda: _firing_devices(centre.store_path(edge), edge)
        )
        assert forwarded == set(DEVICES)
    finally:
        await site.stop(drain_timeout=30)
        await proxy.stop()


async def _all_stored(path: Path, pipeline: Pipeline, count: int) -> bool:
    return all(seqs == list(range(count)) for seqs in (await stored_seqs(path, pipeline)).values())


async def _not(check: Callable[[], Awaitable[bool]]) -> bool:
    return not await check()


async def _firing_devices(path: Path, pipeline: Pipeline) -> set[str] | None:
    """The devices with a firing alert, once every device of the site has one."""
    firing = {a.device for a in await _alerts(path, pipeline) if a.state == "firing"}
    return firing if firing >= set(DEVICES) else None


async def _alerts(path: Path, pipeline: Pipeline) -> list[Any]:
    store = await open_store(path, pipeline)
    try:
        return await store.alerts(FLEET, pipeline.name)
    finally:
        await store.close()


async def _windows(path: Path, pipeline: Pipeline, at_least: int) -> dict[tuple[Any, ...], Any]:
    store = await open_store(path, pipeline)
    try:
        found = {window_key(a): window_values(a) for a in await store.aggregates(FLEET, pipeline.name)}
    finally:
        await store.close()
    return found if len(found) >= at_least else {}


async def _commands(site: EdgePlatform) -> list[str]:
    """The devices with a command in the site's command stream."""
    nc = await site._connect()
    try:
        info = await nc.jetstream().stream_info(subjects.commands_stream(FLEET), subjects_filter=f"ff.{FLEET}.cmd.>")
        return [subject.rsplit(".", 1)[-1] for subject in (info.state.subjects or {})]
    finally:
        await nc.close()


@pytest.mark.parametrize("when_full", ["RejectNew", "DropOldest"])
async def test_the_site_budget_refuses_or_drops_oldest_as_configured(tmp_path: Path, when_full: str) -> None:
    folder = write_yaml(tmp_path / "yaml", {"storage": {"maxBytes": "4Ki", "whenFull": when_full}})
    resources = load_resources([folder])
    unreachable_hub = f"nats://127.0.0.1:{free_port()}"  # no hub: the site runs cut off from the start
    site = await start_site(resources, tmp_path / "site", unreachable_hub, "NoHubHere1")
    try:
        async with aiohttp.ClientSession() as session:
            devices = Devices(site, session)
            answers = [await devices.send(DEVICES[0], start) for start in range(0, 200, PER_REQUEST)]
        state = await site.site_state()
        assert not state.link_up
        assert state.stored_bytes <= 4096
        statuses = [status for status, _ in answers]
        if when_full == "RejectNew":
            accepted = statuses.index(507)
            assert set(statuses[:accepted]) == {202} and set(statuses[accepted:]) == {507}, statuses
            assert answers[accepted][1]["error"] == "storage_full"
            assert "disk budget" in answers[accepted][1]["detail"]
            assert state.batches == accepted and state.removed == 0
        else:
            assert set(statuses) == {202}
            assert state.removed > 0 and state.removed + state.batches == len(answers)
            assert f"dropped oldest {state.removed:,}" in state.line(when_full)
    finally:
        await site.stop(drain_timeout=30)


async def test_a_metered_link_carries_the_edge_aggregates_and_alerts_not_the_raw_readings(tmp_path: Path) -> None:
    async with running_hub(tmp_path, {"readings": False, "records": ["aggregates", "alerts"]}) as (centre, resources):
        assert centre.leafnode_url is not None
        password = site_password_file(centre.data_dir, FLEET, SITE).read_text().strip()
        site = await start_site(resources, tmp_path / "site", centre.leafnode_url, password)
        edge = resources.pipelines[EDGE]
        try:
            async with aiohttp.ClientSession() as session:
                await Devices(site, session).send_range(0, 400)  # one reading a second: a minute window takes 60
            expected = uninterrupted_windows(resources.fleets[FLEET], edge, 400)
            at_site = await poll("the site's windows", lambda: _windows(site.store_path(edge), edge, len(expected)))
            in_centre = await poll("the edge windows in the centre",
                                   lambda: _windows(centre.store_path(edge), edge, len(expected)))  # fmt: skip
            assert in_centre == at_site == expected
            alerts = await poll("the edge alerts in the centre", lambda: _alerts(centre.store_path(edge), edge))
            assert {a.device for a in alerts if a.state == "firing"} == set(DEVICES)

            assert await telemetry_in_stream(centre) == [], "raw readings crossed a metered link"
            assert await stored_seqs(centre.store_path(edge), edge) == {device: [] for device in DEVICES}
            raw = (await site.site_state()).stored_bytes
            crossed = sum(link.in_bytes for link in await leaf_links(centre.nats.monitor_url))
            assert 0 < crossed < raw / 2, f"{crossed} bytes crossed the link; the raw readings at the site are {raw}"
            print(f"metered link: {crossed:,} bytes crossed (aggregates and alerts); raw readings kept at the site: "
                  f"{raw:,} bytes")  # fmt: skip
        finally:
            await site.stop(drain_timeout=30)
