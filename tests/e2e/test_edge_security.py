"""The security of the link between an edge site and its hub (docs/edge.md, Security), with real processes: the
hub's `fleetflow up` platform, a site's `fleetflow edge up` platform, and a rogue leaf node (a plain nats-server
with a site's password and none of the site's denies). A site publishes only into its own account at the hub, a
revoked site's next connection is refused, and the leaf connection runs over TLS."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import nats
import pytest
from cryptography import x509

from fleetflow.cli.main import main as fleetflow
from fleetflow.local.edgesite import EdgePlatform
from fleetflow.local.platform import LocalPlatform
from fleetflow.local.resources import ResourceSet, load_resources, site_resources
from fleetflow.local.sitelinks import leaf_links
from fleetflow.local.sitelogins import revoked_file, site_password_file
from fleetflow.runtime import edgelink, subjects
from tests.e2e.test_edge_site import FLEET, SITE, Devices, poll, write_yaml
from tests.support.certificates import new_authority
from tests.support.linkproxy import LinkProxy
from tests.support.natsserver import rogue_leaf

pytestmark = pytest.mark.e2e
DOMAIN = edgelink.site_domain(FLEET, SITE)
FORWARD = {"forward": {"readings": True}}


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[tuple[LocalPlatform, ResourceSet]]:
    resources = load_resources([write_yaml(tmp_path / "yaml", FORWARD)])
    platform = LocalPlatform(resources, tmp_path / "hub")
    await platform.start()
    try:
        yield platform, resources
    finally:
        await platform.stop(drain_timeout=30)


def site_password(centre: LocalPlatform) -> str:
    return site_password_file(centre.data_dir, FLEET, SITE).read_text().strip()


async def test_a_site_cannot_publish_into_the_fleets_subjects_at_the_hub(
    tmp_path: Path, hub: tuple[LocalPlatform, ResourceSet]
) -> None:
    centre, _ = hub
    assert centre.leafnode_url is not None
    hub_port = int(centre.leafnode_url.rsplit(":", 1)[1])
    with rogue_leaf(tmp_path, hub_port, DOMAIN, site_password(centre)) as rogue_url:
        await poll("the rogue leaf connected", lambda: leaf_links(centre.nats.monitor_url))
        watcher, rogue = await centre._connect(), await nats.connect(rogue_url)
        try:
            # What the fleets' account imports from the site's account: the probe shows the path is open.
            probe = f"{edgelink.deliver_prefix(DOMAIN)}.probe"
            probes = await watcher.subscribe(probe)
            fleet_data = await watcher.subscribe(f"ff.{FLEET}.>")
            await watcher.flush()

            async def probe_arrives() -> bool:
                await rogue.publish(probe, b"probe")
                await rogue.flush()
                try:
                    await probes.next_msg(timeout=0.2)
                    return True
                except nats.errors.TimeoutError:
                    return False

            await poll("a probe from the rogue leaf reaching the fleets' account", probe_arrives)
            await rogue.publish(f"ff.{FLEET}.tm.crane-1", b'{"forged": true}')
            await rogue.publish(f"ff.{FLEET}.cmd.crane-1", b'{"forged": true}')
            # The same connection, after the forged messages: once this probe is here, they would have been too.
            await poll("the probe after the forged messages", probe_arrives)
            assert fleet_data.pending_msgs == 0, "a site published into the fleets' subjects at the hub"
            info = await watcher.jetstream().stream_info(subjects.telemetry_stream(FLEET))
            assert info.state.messages == 0
        finally:
            await rogue.close()
            await watcher.close()


async def test_a_revoked_site_is_refused_at_its_next_connect(
    tmp_path: Path, hub: tuple[LocalPlatform, ResourceSet]
) -> None:
    centre, resources = hub
    assert centre.leafnode_url is not None and centre.site_links is not None
    proxy = LinkProxy(int(centre.leafnode_url.rsplit(":", 1)[1]))
    await proxy.start()
    site = EdgePlatform(site_resources(resources, FLEET, SITE), tmp_path / "site", resources.fleets[FLEET].spec.sites[0],
                        proxy.url, site_password(centre))  # fmt: skip
    await site.start()
    try:
        await poll("the site's link to the hub", site.link_up)
        assert fleetflow(["edge", "revoke", str(tmp_path / "yaml"), "--data-dir", str(centre.data_dir)]) == 0
        assert revoked_file(centre.data_dir, FLEET, SITE).exists()
        assert not site_password_file(centre.data_dir, FLEET, SITE).exists()
        hub_log = centre.nats.log_file
        await poll("the hub reloading its logins", lambda: _logged(hub_log, "Reloaded server configuration"))

        refusals = _count(hub_log, "Authorization Error") + _count(hub_log, "authentication error")
        proxy.cut()
        proxy.restore()
        await poll("the hub refusing the revoked site's next connection",
                   lambda: _refused_more_than(hub_log, refusals))  # fmt: skip
        assert not await site.link_up()
        assert await leaf_links(centre.nats.monitor_url) == []
    finally:
        await site.stop(drain_timeout=30)
        await proxy.stop()


async def _logged(path: Path, text: str) -> bool:
    return text in await asyncio.to_thread(path.read_text, errors="replace")


def _count(path: Path, text: str) -> int:
    return path.read_text(errors="replace").lower().count(text.lower())


async def _refused_more_than(path: Path, before: int) -> bool:
    return _count(path, "Authorization Error") + _count(path, "authentication error") > before


async def test_the_leaf_connection_runs_over_tls_verified_against_the_hubs_ca(tmp_path: Path) -> None:
    authority = new_authority()
    certificates = authority.tls_secret_files(tmp_path / "certs", ["localhost"])
    resources = load_resources([write_yaml(tmp_path / "yaml", FORWARD)])
    centre = LocalPlatform(resources, tmp_path / "hub",
                           leafnode_tls=(certificates / "tls.crt", certificates / "tls.key"))  # fmt: skip
    await centre.start()
    fleet = resources.fleets[FLEET]
    try:
        assert centre.leafnode_url is not None and centre.leafnode_url.startswith("tls://127.0.0.1:")
        expiry = x509.load_pem_x509_certificate((certificates / "tls.crt").read_bytes()).not_valid_after_utc
        assert await _leafnode_expiry(f"{centre.sites_url}/metrics", FLEET) == expiry.timestamp()
        site = EdgePlatform(site_resources(resources, FLEET, SITE), tmp_path / "site", fleet.spec.sites[0],
                            centre.leafnode_url, site_password(centre), hub_ca=certificates / "ca.crt")  # fmt: skip
        await site.start()
        try:
            await poll("the site's TLS link to the hub", site.link_up)
            assert (await _listener_info(centre.leafnode_url)).get("tls_required") is True
            async with aiohttp.ClientSession() as session:
                status, answer = await Devices(site, session).send("crane-1", 0)
            assert status == 202, answer
            await poll("the site's batch sourced into the centre over TLS", lambda: _telemetry_count(centre))
        finally:
            await site.stop(drain_timeout=30)

        other_ca = new_authority("another CA").tls_secret_files(tmp_path / "other", ["localhost"])
        stranger = EdgePlatform(site_resources(resources, FLEET, SITE), tmp_path / "stranger", fleet.spec.sites[0],
                                centre.leafnode_url, site_password(centre), hub_ca=other_ca / "ca.crt")  # fmt: skip
        await stranger.start()
        try:
            await poll("the site refusing a hub its CA did not sign",
                       lambda: _logged(stranger.nats.log_file, "certificate"))  # fmt: skip
            assert not await stranger.link_up()
        finally:
            await stranger.stop(drain_timeout=30)
    finally:
        await centre.stop(drain_timeout=30)


async def _leafnode_expiry(metrics_url: str, fleet: str) -> float:
    """The expiry the hub exports for the certificate its leaf-node listener serves a fleet's sites."""
    async with aiohttp.ClientSession() as session, session.get(metrics_url) as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith("fleetflow_tls_certificate_expiry_timestamp_seconds{") and f'fleet="{fleet}"' in line:
            assert 'certificate="nats"' in line and 'component="hub"' in line, line
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no certificate expiry for fleet {fleet!r} in {metrics_url}:\n{text}")


async def _listener_info(url: str) -> dict[str, object]:
    """The INFO a NATS listener greets with: it says whether the listener requires TLS."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        line = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    assert line.startswith(b"INFO "), line
    return dict(json.loads(line[5:]))


async def _telemetry_count(platform: LocalPlatform) -> int:
    nc = await platform._connect()
    try:
        return (await nc.jetstream().stream_info(subjects.telemetry_stream(FLEET))).state.messages
    finally:
        await nc.close()


async def test_two_sites_each_in_its_own_account_both_catch_up_in_full(tmp_path: Path) -> None:
    """Each site's account exports its own deliveries and `$JS.FC.>` (flow control, which names no site): with two
    sites sending megabytes at once, both streams still arrive whole, once."""
    document = {"apiVersion": "fleetflow.io/v1alpha1", "kind": "DeviceFleet", "metadata": {"name": FLEET},
                "spec": {"sites": [{"name": "north"}, {"name": "south"}]}}  # fmt: skip
    (tmp_path / "yaml").mkdir()
    (tmp_path / "yaml" / "fleet.yaml").write_text(json.dumps(document))
    resources = load_resources([tmp_path / "yaml"])
    centre = LocalPlatform(resources, tmp_path / "hub")
    await centre.start()
    assert centre.leafnode_url is not None
    sites = []
    try:
        for declared in resources.fleets[FLEET].spec.sites:
            password = site_password_file(centre.data_dir, FLEET, declared.name).read_text().strip()
            site = EdgePlatform(site_resources(resources, FLEET, declared.name), tmp_path / declared.name, declared,
                                centre.leafnode_url, password)  # fmt: skip
            sites.append(site)
            await site.start()
            await poll(f"site {declared.name} linked", site.link_up)
        per_site, started = 4000, time.monotonic()
        for site in sites:
            await _publish_at(site, per_site)
        await poll("both sites' messages in the centre",
                   lambda: _telemetry_at_least(centre, 2 * per_site))  # fmt: skip
        print(f"two sites, {per_site:,} messages of 2 kB each: all in the centre {time.monotonic() - started:.1f}s "
              "after the first publish")  # fmt: skip
        assert await _telemetry_count(centre) == 2 * per_site
    finally:
        for site in sites:
            await site.stop(drain_timeout=10)
        await centre.stop(drain_timeout=10)


async def _publish_at(site: EdgePlatform, count: int) -> None:
    """Straight into the site's telemetry stream, acknowledged by the site's JetStream (no gateway: bulk)."""
    nc = await site._connect()
    try:
        js, payload = nc.jetstream(), b"x" * 2000
        for first in range(0, count, 500):
            await asyncio.gather(*(js.publish(f"ff.{FLEET}.tm.dev-{i % 7}", payload,
                                              headers={"Nats-Msg-Id": f"{site.site_name}/{i}"})
                                   for i in range(first, min(first + 500, count))))  # fmt: skip
    finally:
        await nc.close()


async def _telemetry_at_least(platform: LocalPlatform, count: int) -> bool:
    return await _telemetry_count(platform) >= count
