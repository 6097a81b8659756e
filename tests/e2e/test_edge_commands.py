"""Commands queued in the centre for a device that connects at an edge site (docs/edge.md, Commands): they stay in
the centre and expire there by their TTL; none reaches the site's command stream. Real hub and site processes and
the `fleetflow command` CLI."""

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from fleetflow.local.edgesite import EdgePlatform
from fleetflow.local.platform import LocalPlatform
from fleetflow.local.resources import load_resources, site_resources
from fleetflow.local.sitelogins import site_password_file
from fleetflow.runtime import subjects
from tests.e2e.test_edge_site import FLEET, SITE, poll, write_yaml

pytestmark = pytest.mark.e2e


async def fleetflow(*args: str) -> Any:
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "fleetflow.cli", *args, "--json",
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]  # JSON lines, one per command


async def site_commands(site: EdgePlatform, device: str) -> int:
    nc = await site._connect()
    try:
        info = await nc.jetstream().stream_info(subjects.commands_stream(FLEET), subjects_filter=f"ff.{FLEET}.cmd.>")
        return (info.state.subjects or {}).get(subjects.command_subject(FLEET, device), 0)
    finally:
        await nc.close()


async def test_a_command_queued_centrally_for_a_site_device_expires_by_its_ttl_in_the_centre(tmp_path: Path) -> None:
    resources = load_resources([write_yaml(tmp_path / "yaml", {"forward": {"readings": True}})])
    centre = LocalPlatform(resources, tmp_path / "hub")
    await centre.start()
    assert centre.leafnode_url is not None
    password = site_password_file(centre.data_dir, FLEET, SITE).read_text().strip()
    site = EdgePlatform(site_resources(resources, FLEET, SITE), tmp_path / "site", resources.fleets[FLEET].spec.sites[0],
                        centre.leafnode_url, password)  # fmt: skip
    await site.start()
    hub_dir = str(centre.data_dir)
    try:
        await poll("the site's link to the hub", site.link_up)
        (sent,) = await fleetflow("command", "send", FLEET, "crane-1", "cool", "--ttl", "2", "--data-dir", hub_dir)
        assert sent["state"] == "queued", sent

        async def expired() -> Any:
            found = await fleetflow("command", "list", FLEET, "--state", "expired", "--data-dir", hub_dir)
            return [c for c in found if c["id"] == sent["id"]]

        (command,) = await poll("the command expiring in the centre", expired, timeout=30)
        assert [step["state"] for step in command["history"]] == ["queued", "expired"], command
        assert await site.link_up(), "the link stood the whole time"
        assert await site_commands(site, "crane-1") == 0, "a centrally queued command reached the site"
    finally:
        await site.stop(drain_timeout=30)
        await centre.stop(drain_timeout=30)
