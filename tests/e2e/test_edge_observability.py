"""What the centre shows of an edge site (docs/edge.md, Observability), with a real hub and site and the link cut
by a proxy: link state, backlog age and the bytes each link carried, on the hub's /sites and /metrics and in
`fleetflow status`."""

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fleetflow.local.edgesite import EdgePlatform
from fleetflow.local.platform import LocalPlatform
from fleetflow.local.resources import load_resources, site_resources
from fleetflow.local.sitelogins import site_password_file
from tests.e2e.test_edge_site import FLEET, SITE, Devices, poll, write_yaml
from tests.support.linkproxy import LinkProxy

pytestmark = pytest.mark.e2e


def sample(metrics: str, name: str) -> float:
    """The value of series `name` of this test's site in a Prometheus text page."""
    for line in metrics.splitlines():
        if line.startswith(name + "{") and f'fleet="{FLEET}"' in line and f'site="{SITE}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} for site {SITE} in:\n{metrics}")


async def fetch(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as got:
        return await (got.json() if url.endswith("/sites") else got.text())


async def test_the_centre_shows_each_sites_link_backlog_age_and_bytes(tmp_path: Path) -> None:
    resources = load_resources([write_yaml(tmp_path / "yaml", {"forward": {"readings": True}})])
    centre = LocalPlatform(resources, tmp_path / "hub")
    endpoints = await centre.start()
    sites_url, metrics_url = endpoints["leafnodes"]["sites"], endpoints["leafnodes"]["metrics"]
    assert centre.leafnode_url is not None
    proxy = LinkProxy(int(centre.leafnode_url.rsplit(":", 1)[1]))
    await proxy.start()
    password = site_password_file(centre.data_dir, FLEET, SITE).read_text().strip()
    site = EdgePlatform(site_resources(resources, FLEET, SITE), tmp_path / "site", resources.fleets[FLEET].spec.sites[0],
                        proxy.url, password)  # fmt: skip
    await site.start()

    async def state() -> dict[str, Any]:
        (only,) = (await fetch(sites_url))["sites"]
        return dict(only)

    try:
        async with aiohttp.ClientSession() as session:
            devices = Devices(site, session)
            await poll("the link up at the centre", lambda: _where(state, lambda s: s["link_up"]))
            await devices.send_range(0, 30)
            linked = await poll("the batches crossing, caught up",
                                lambda: _where(state, lambda s: s["received_bytes"] > 2000 and
                                               s["backlog_messages"] == 0))  # fmt: skip
            assert linked["backlog_age_seconds"] < 2

            status = await asyncio.create_subprocess_exec(sys.executable, "-m", "fleetflow.cli", "status", "--data-dir",
                                                          str(centre.data_dir), stdout=asyncio.subprocess.PIPE)  # fmt: skip
            printed = (await status.communicate())[0].decode()
            assert status.returncode == 0, printed
            assert "edge sites: 1/1 connected" in printed and f"{FLEET}/{SITE}" in printed, printed

            proxy.cut()
            cut_at = time.monotonic()
            down = await poll("the centre seeing the link down, the backlog ageing",
                              lambda: _where(state, lambda s: not s["link_up"] and s["backlog_age_seconds"] >= 2))  # fmt: skip
            assert down["received_bytes"] >= linked["received_bytes"], "bytes of an ended connection still count"
            assert down["backlog_age_seconds"] <= time.monotonic() - cut_at + 1.5
            metrics = await fetch(metrics_url)
            assert sample(metrics, "fleetflow_site_link_up") == 0
            assert sample(metrics, "fleetflow_site_link_received_bytes_total") >= linked["received_bytes"]
            assert sample(metrics, "fleetflow_site_backlog_age_seconds") >= 2
            await devices.send_range(30, 50)  # held at the site while cut off

            proxy.restore()
            back = await poll("the link back and the centre caught up again",
                              lambda: _where(state, lambda s: s["link_up"] and s["backlog_age_seconds"] == 0 and
                                             s["received_bytes"] > down["received_bytes"]))  # fmt: skip
            assert back["backlog_messages"] == 0
            assert sample(await fetch(metrics_url), "fleetflow_site_link_up") == 1
    finally:
        await site.stop(drain_timeout=30)
        await proxy.stop()
        await centre.stop(drain_timeout=30)


async def _where(read: Any, check: Any) -> dict[str, Any] | None:
    found = await read()
    return found if check(found) else None
