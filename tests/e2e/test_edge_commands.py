"""Commands queued in the centre for a device at an edge site (docs/edge.md, Commands), with real processes: the
hub's `fleetflow up` platform, a site's `fleetflow edge up` platform behind a link the test cuts, and an HTTP device
at the site. The centre pushes the command to the device's site, the site's gateway delivers it, and its life cycle
comes back to the centre; a command whose TTL passes while the link is down expires in the centre and never reaches
the site; another site never receives it."""

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
import yaml

from fleetflow.device.commands import HttpCommands
from fleetflow.gateway.command_admin import list_records, send
from fleetflow.local.edgesite import EdgePlatform
from fleetflow.local.platform import LocalPlatform
from fleetflow.local.resources import ResourceSet, load_resources
from fleetflow.local.sitelinks import leaf_links
from fleetflow.local.sitelogins import site_password_file
from fleetflow.runtime import credentials, edgelink, subjects
from fleetflow.runtime.commands import CommandRecord
from tests.e2e.test_edge_site import FLEET, SITE, Devices, poll, start_site, telemetry_in_stream, write_yaml
from tests.support.linkproxy import LinkProxy
from tests.support.natsserver import rogue_leaf

pytestmark = pytest.mark.e2e
DEVICE = "crane-1"
OTHER_SITE = "south"


@contextlib.asynccontextmanager
async def running_hub(folder: Path, data_dir: Path) -> AsyncIterator[tuple[LocalPlatform, ResourceSet]]:
    resources = load_resources([folder])
    platform = LocalPlatform(resources, data_dir)
    await platform.start()
    try:
        yield platform, resources
    finally:
        await platform.stop(drain_timeout=30)


async def fleetflow(*args: str) -> Any:
    """The `fleetflow` CLI with --json: one object per line."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "fleetflow.cli", *args, "--json",
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


async def centre_record(centre: LocalPlatform, command_id: str) -> CommandRecord | None:
    nc = await centre._connect()
    try:
        return next((r for r in await list_records(nc, FLEET, DEVICE) if r.command.id == command_id), None)
    finally:
        await nc.close()


async def queue(centre: LocalPlatform, name: str, ttl_seconds: float) -> str:
    """`fleetflow command send` in the centre: the command's id."""
    nc = await centre._connect()
    try:
        return (await send(nc, FLEET, DEVICE, name, {"to": 4.0}, ttl_seconds)).command.id
    finally:
        await nc.close()


async def in_state(centre: LocalPlatform, command_id: str, state: str) -> CommandRecord | None:
    record = await centre_record(centre, command_id)
    return record if record is not None and record.state == state else None


async def at_the_site(site: EdgePlatform, command_id: str) -> bool:
    """Whether the site's command stream holds the command (its id is the Nats-Msg-Id)."""
    nc = await site._connect()
    try:
        js = nc.jetstream()
        sub = await js.subscribe(f"ff.{FLEET}.cmd.>", stream=subjects.commands_stream(FLEET), ordered_consumer=True)
        try:
            total = (await js.stream_info(subjects.commands_stream(FLEET))).state.messages
            ids = [((await sub.next_msg(timeout=5)).headers or {}).get("Nats-Msg-Id") for _ in range(total)]
        finally:
            await sub.unsubscribe()
        return command_id in ids
    finally:
        await nc.close()


class SiteDevice:
    """The device at the site: it sends a reading (so the centre knows where it is) and takes its commands from the
    site's gateway over HTTP, reporting each succeeded."""

    def __init__(self, site: EdgePlatform, session: aiohttp.ClientSession):
        self.readings = Devices(site, session)
        token = credentials.device_token(self.readings.secret, FLEET, DEVICE)
        self.commands = HttpCommands(session, site.gateway_url(site.fleet), FLEET, DEVICE, token)
        self.received: list[str] = []

    async def take(self, command_id: str) -> bool:
        """Poll once; report what came; whether `command_id` has come by now."""
        for command in await self.commands.poll(wait=1):
            self.received.append(command["id"])
            await self.commands.report(command["id"], "succeeded", "cooled")
        return command_id in self.received


async def test_centrally_queued_commands_reach_the_site_device_link_or_no_link(tmp_path: Path) -> None:
    folder = write_yaml(tmp_path / "yaml", {"forward": {"readings": True}})
    async with running_hub(folder, tmp_path / "hub") as (centre, resources):
        assert centre.leafnode_url is not None
        proxy = LinkProxy(int(centre.leafnode_url.rsplit(":", 1)[1]))
        await proxy.start()
        password = site_password_file(centre.data_dir, FLEET, SITE).read_text().strip()
        site = await start_site(resources, tmp_path / "site", proxy.url, password)
        try:
            async with aiohttp.ClientSession() as session:
                device = SiteDevice(site, session)
                await poll("the site's link to the hub", site.link_up)
                status, answer = await device.readings.send(DEVICE, 0)
                assert status == 202, answer
                await poll("the device's reading in the centre", lambda: _reading_of(centre, DEVICE))
                assert await _origin(centre, resources) == SITE, "the centre reads the reading's site from its header"

                # Link up: delivered at the site, reported succeeded, and the centre shows it.
                linked = await queue(centre, "cool", ttl_seconds=600)
                await poll("the command at the site's device", lambda: device.take(linked))
                done = await poll("succeeded in the centre", lambda: in_state(centre, linked, "succeeded"))
                assert [t.state for t in done.history] == ["queued", "forwarded", "forwarded", "delivered",
                                                           "succeeded"]  # fmt: skip
                assert [t.detail for t in done.history][1:4] == [f"to site {SITE}", f"stored at site {SITE}",
                                                                 f"at site {SITE}: via http"]  # fmt: skip

                # Link cut: the centre keeps it until the link returns, then it crosses and is delivered.
                proxy.cut()
                await poll("the site noticing the cut", lambda: _down(site))
                waiting = await queue(centre, "cool", ttl_seconds=600)
                held = await poll("claimed for the site in the centre", lambda: in_state(centre, waiting, "forwarded"))
                assert [t.detail for t in held.history] == ["", f"to site {SITE}"], "stored at a cut-off site"
                proxy.restore()
                await poll("the command crossing the restored link", lambda: device.take(waiting), timeout=90)
                await poll("succeeded in the centre after the outage", lambda: in_state(centre, waiting, "succeeded"))

                # TTL passing while cut: expired in the centre, and the site never gets it.
                proxy.cut()
                await poll("the site noticing the second cut", lambda: _down(site))
                short = await queue(centre, "cool", ttl_seconds=2)
                expired = await poll("expired in the centre", lambda: in_state(centre, short, "expired"), timeout=30)
                # Expired by the forwarder (claimed for the site, never stored) or, on a machine too busy for it to claim
                # the command within its TTL, by the centre's expiry: either way the site never stored it.
                assert f"stored at site {SITE}" not in [t.detail for t in expired.history], expired.history
                proxy.restore()
                after = await queue(
                    centre, "cool", ttl_seconds=600
                )  # queued after the expired one, so it crosses after
                await poll("a later command crossing", lambda: device.take(after), timeout=90)
                assert short not in device.received
                assert not await at_the_site(site, short), "an expired command reached the site"
                assert device.received == [linked, waiting, after], "each command delivered once, in order"
                await poll("the later command succeeded in the centre", lambda: in_state(centre, after, "succeeded"))
            listed = await fleetflow("command", "list", FLEET, "--device", DEVICE, "--data-dir", str(centre.data_dir))
            assert {c["id"]: c["state"] for c in listed} == {linked: "succeeded", waiting: "succeeded",
                                                             short: "expired", after: "succeeded"}  # fmt: skip
        finally:
            await site.stop(drain_timeout=30)
            await proxy.stop()


async def _reading_of(centre: LocalPlatform, device: str) -> bool:
    return any(d == device for d, _ in await telemetry_in_stream(centre))


async def _origin(centre: LocalPlatform, resources: ResourceSet) -> str | None:
    nc = await centre._connect()
    try:
        latest = await nc.jetstream().get_last_msg(subjects.telemetry_stream(FLEET), f"ff.{FLEET}.tm.*.{DEVICE}")
    finally:
        await nc.close()
    return edgelink.origin_site(resources.fleets[FLEET], (latest.headers or {}).get(edgelink.STREAM_SOURCE_HEADER))


async def _down(site: EdgePlatform) -> bool:
    return not await site.link_up()


def two_site_yaml(folder: Path) -> Path:
    """The yard of write_yaml with a second site, south, which runs no pipelines."""
    path = write_yaml(folder, {"forward": {"readings": True}}) / "fleet.yaml"
    documents: list[Any] = list(yaml.safe_load_all(path.read_text()))
    documents[0]["spec"]["sites"].append({"name": OTHER_SITE})
    path.write_text(yaml.safe_dump_all(documents))
    return folder


async def test_a_site_never_receives_another_sites_device_commands(tmp_path: Path) -> None:
    async with running_hub(two_site_yaml(tmp_path / "yaml"), tmp_path / "hub") as (centre, resources):
        assert centre.leafnode_url is not None
        hub_port = int(centre.leafnode_url.rsplit(":", 1)[1])
        south = edgelink.site_domain(FLEET, OTHER_SITE)
        south_password = site_password_file(centre.data_dir, FLEET, OTHER_SITE).read_text().strip()
        north_password = site_password_file(centre.data_dir, FLEET, SITE).read_text().strip()
        site = await start_site(resources, tmp_path / "site", centre.leafnode_url, north_password)
        try:
            with rogue_leaf(tmp_path, hub_port, south, south_password) as rogue_url:
                await poll("both sites linked", lambda: _links(centre, 2))
                rogue = await nats.connect(rogue_url)
                try:
                    everything = await rogue.subscribe(">")  # all the south site's account at the hub passes on
                    await rogue.flush()
                    async with aiohttp.ClientSession() as session:
                        device = SiteDevice(site, session)
                        status, answer = await device.readings.send(DEVICE, 0)
                        assert status == 202, answer
                        await poll("the device's reading in the centre", lambda: _reading_of(centre, DEVICE))
                        command = await queue(centre, "cool", ttl_seconds=600)
                        await poll("the command at the north site's device", lambda: device.take(command))
                        await poll("succeeded in the centre", lambda: in_state(centre, command, "succeeded"))
                    await rogue.flush()
                    seen = []
                    while everything.pending_msgs:
                        message = await everything.next_msg(timeout=1)
                        seen.append((message.subject, message.data))
                    leaked = [subject for subject, data in seen if command.encode() in data or DEVICE in subject]
                    assert leaked == [], f"the south site received north's device command: {leaked}"
                finally:
                    await rogue.close()
        finally:
            await site.stop(drain_timeout=30)


async def _links(centre: LocalPlatform, count: int) -> bool:
    return len(await leaf_links(centre.nats.monitor_url)) >= count
