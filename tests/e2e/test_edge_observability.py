"""What the centre shows of an edge site (docs/edge.md, Observability), with a real hub and site and the link cut
by a proxy: link state, backlog age and the bytes each link carried, on the hub's /sites and /metrics and in
`fleetflow status`; and the hub's /metrics in the scrape configuration `fleetflow up` writes, so that a real
Prometheus fills the edge-sites dashboard."""

import asyncio
import contextlib
import json
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
from tests.e2e.test_edge_site import FLEET, SITE, Devices, poll, running_hub, write_yaml
from tests.support.linkproxy import LinkProxy
from tests.support.prometheus import PROMETHEUS, prometheus

pytestmark = pytest.mark.e2e
EDGE_SITES = Path(__file__).resolve().parents[2] / "charts" / "fleetflow" / "dashboards" / "edge-sites.json"


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
            assert f"http://{hub_target(centre.data_dir)}/metrics" == metrics_url, "the scrape config misses the hub"
            assert sample(await fetch(metrics_url), "fleetflow_site_link_up") == 1

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


def hub_target(data_dir: Path) -> str:
    """HOST:PORT of the one target labelled component="hub" in the scrape configuration `fleetflow up` wrote."""
    targets = json.loads((data_dir / "prometheus" / "targets.json").read_text())
    hubs = [t for t in targets if t["labels"]["component"] == "hub"]
    assert len(hubs) == 1, f"not one hub target in targets.json: {targets}"
    (hub,) = hubs
    assert hub["labels"]["service"] == "hub" and "fleet" not in hub["labels"], "the series carry fleet themselves"
    (address,) = hub["targets"]
    return str(address)


def edge_dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of the edge-sites dashboard, with "All" for its variables."""
    panels = json.loads(EDGE_SITES.read_text())["panels"]
    return [(panel["title"], target["expr"].replace("$__rate_interval", "30s").replace("$fleet", ".*")
             .replace("$site", ".*")) for panel in panels for target in panel.get("targets", [])]  # fmt: skip


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed: make observability-tools")
async def test_a_prometheus_with_the_scrape_config_of_a_hub_fills_the_edge_sites_dashboard(tmp_path: Path) -> None:
    """The site never connects here: its link is down, which the dashboard must show as 0, not as no data."""
    async with running_hub(tmp_path, {"readings": True}) as (centre, _):
        assert hub_target(centre.data_dir) == centre.leafnodes_endpoint()["metrics"].split("/")[2]
        with contextlib.ExitStack() as stack:
            # Prometheus starts in a thread: the hub's /metrics is served by this event loop meanwhile.
            api = await asyncio.to_thread(stack.enter_context, prometheus(centre.data_dir, tmp_path))
            link = f'fleetflow_site_link_up{{fleet="{FLEET}", site="{SITE}", component="hub", service="hub"}} == 0'
            await poll("Prometheus scraping the hub's site link", lambda: asyncio.to_thread(api.query, link))

            queries, deadline = edge_dashboard_queries(), time.monotonic() + 30
            while empty := [
                f"{title}: {expr}" for title, expr in queries if not await asyncio.to_thread(api.query, expr)
            ]:
                assert time.monotonic() < deadline, "edge-sites panels without data:\n" + "\n".join(empty)
                await asyncio.sleep(0.5)
            await asyncio.to_thread(stack.close)
