"""A hub of edge sites on a cluster: the managed NATS the operator renders for a fleet with `spec.sites` (three
servers, run by the real nats-server with the environment the kubelet would give them, tests/support/managed_nats.py)
and a site's real nats-server dialling it as a leaf node with the password of its Secret. The operator's link watch
(fleetflow.operator.sitelinks) sees the site connected through whichever server it landed on; a site with a wrong
password is refused and shows as not connected; the operator's links user may ask for nothing but /leafz; and the
centre's telemetry stream sources what the site stored through the per-site account the operator rendered, at once
when the operator re-arms its sources."""

import asyncio
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest

from fleetflow.local.natsserver import free_port, nats_server_binary
from fleetflow.operator import nats_credentials, sitelinks
from fleetflow.operator.builders import sites
from fleetflow.operator.streams import StreamError
from fleetflow.runtime import edgelink, jetstream, natsauth, subjects
from fleetflow.runtime.natsauth import NatsLogin
from tests.operator.variants import fleet, fleet_doc
from tests.support.managed_nats import Pod, managed_nats, secret_value

FLEET = fleet(
    fleet_doc(
        nats={"managed": {"replicas": 3}},
        streams={"maxBytes": "1Gi"},
        sites=[{"name": "depot-a"}, {"name": "depot-b"}],
    )
)
TIMEOUT = 2.0
SITE_LOGIN = NatsLogin("site", "sitepassword1")  # the site's own services, in its own NATS


@dataclass
class Site:
    url: str
    log: Path


@contextmanager
def site_server(folder: Path, site: str, hub: Pod, password: str) -> Iterator[Site]:
    """A site's NATS as `fleetflow edge up` runs it: a JetStream domain of its own, a leaf node of the hub."""
    folder.mkdir(parents=True)
    port = free_port()
    domain = edgelink.site_domain(FLEET.name, site)
    remote = edgelink.leaf_remote_config(
        f"nats://127.0.0.1:{hub.leafnode_port}", domain, password, natsauth.SERVICE_ACCOUNT
    )
    conf = folder / "nats.conf"
    conf.write_text(
        "\n".join(
            [
                f"listen: 127.0.0.1:{port}",
                f"server_name: site-{domain}",
                f'jetstream {{ store_dir: "{folder / "js"}", domain: {domain} }}',
                f"accounts {{ {natsauth.SERVICE_ACCOUNT} {{ jetstream: enabled, users: [ {{ user: site, password: "
                f"{SITE_LOGIN.password} }} ] }} }}",
                remote,
            ]
        )
    )
    log = folder / "nats.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(nats_server_binary()), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        yield Site(f"nats://127.0.0.1:{port}", log)
    finally:
        process.terminate()
        process.wait(timeout=15)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[list[Pod], dict[str, Any], dict[str, str]]]:
    """The hub's servers, the fleet's credentials Secret, and each site's password (from its Secret)."""
    secret = nats_credentials.credentials_secret(FLEET, nats_credentials.new_values())
    site_secrets = [sites.site_secret(FLEET, s.name, natsauth.new_password()) for s in FLEET.spec.sites]
    passwords = {s["metadata"]["labels"][sites.SITE_LABEL]: secret_value(s, sites.PASSWORD_KEY) for s in site_secrets}
    with managed_nats(FLEET, secret, tmp_path / "hub", site_secrets=site_secrets) as pods:
        yield pods, secret, passwords


def services_login(secret: dict[str, Any]) -> NatsLogin:
    return NatsLogin(natsauth.SERVICE_USER, secret_value(secret, nats_credentials.SERVICES_PASSWORD_KEY))


async def links_until(pod: Pod, secret: dict[str, Any], wanted: dict[str, bool]) -> list[sitelinks.SiteLink]:
    """Ask as the operator does, through `pod`, until the sites' connected states are `wanted` (20 s at most)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            links = await sitelinks.observe(pod.url, FLEET, TIMEOUT, services_login(secret), None)
        except StreamError as exc:  # JetStream still electing its leader: the operator tries at its next reconcile
            links, problem = [], exc
        else:
            problem = None
            if {link.name: link.connected for link in links} == wanted:
                return links
        assert time.monotonic() < deadline, f"the operator saw {links or problem}, not {wanted}"
        await asyncio.sleep(0.2)


async def test_the_operator_sees_which_sites_are_connected_through_any_server(
    tmp_path: Path, hub: tuple[list[Pod], dict[str, Any], dict[str, str]]
) -> None:
    pods, secret, passwords = hub
    links = await links_until(pods[0], secret, {"depot-a": False, "depot-b": False})
    assert sitelinks.connected_of(links) == "0/2"
    # depot-a lands on the third server; the operator asks the first: every server answers the one request.
    with (
        site_server(tmp_path / "depot-a", "depot-a", pods[2], passwords["depot-a"]),
        site_server(tmp_path / "depot-b", "depot-b", pods[1], "wrong" + passwords["depot-b"]) as refused,
    ):
        links = await links_until(pods[0], secret, {"depot-a": True, "depot-b": False})
        assert sitelinks.connected_of(links) == "1/2"
        # The centre reaches the site's JetStream API (what its sourcing streams use), and the link counts the bytes.
        login = services_login(secret)
        nc = await nats.connect(pods[0].url, user=login.user, password=login.password)
        try:
            reply = await nc.request(f"{edgelink.site_api(FLEET.name, 'depot-a')}.INFO", b"", timeout=5)
            assert b'"type":"io.nats.jetstream.api.v1.account_info_response"' in reply.data
        finally:
            await nc.close()
        deadline = time.monotonic() + 20
        while not ((depot_a := (await links_until(pods[0], secret, {"depot-a": True, "depot-b": False}))[0]).sent_bytes
                   and depot_a.received_bytes):  # fmt: skip
            assert time.monotonic() < deadline, f"no bytes counted on the link: {depot_a}"
            await asyncio.sleep(0.2)
        deadline = time.monotonic() + 20
        while "authorization violation" not in refused.log.read_text().lower():
            assert time.monotonic() < deadline, "the site with a wrong password was not refused"
            await asyncio.sleep(0.2)
    await links_until(pods[0], secret, {"depot-a": False, "depot-b": False})


async def test_the_operators_links_user_may_ask_for_leafz_and_nothing_else(
    hub: tuple[list[Pod], dict[str, Any], dict[str, str]],
) -> None:
    pods, secret, _ = hub
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    password = secret_value(secret, nats_credentials.SERVICES_PASSWORD_KEY)
    nc = await nats.connect(pods[0].url, user=sites.LINKS_USER, password=password, error_cb=on_error)
    try:
        assert len(await sitelinks.leaf_connections(nc, 3, TIMEOUT)) == 0
        for subject in ("$SYS.REQ.SERVER.PING.CONNZ", "ff.cold.tm.box-1"):
            await nc.publish(subject, b"{}")
        await nc.flush()
        deadline = time.monotonic() + 5
        while len(errors) < 2:
            assert time.monotonic() < deadline, f"publishes outside /leafz were not refused: {errors}"
            await asyncio.sleep(0.05)
        assert all("permissions violation" in str(exc).lower() for exc in errors), errors
    finally:
        await nc.close()


async def test_the_centre_sources_what_the_site_stored_once_the_operator_re_arms_its_sources(
    tmp_path: Path, hub: tuple[list[Pod], dict[str, Any], dict[str, str]]
) -> None:
    pods, secret, passwords = hub
    login = services_login(secret)
    telemetry = subjects.telemetry_stream(FLEET.name)
    centre = await jetstream.connect(pods[0].url, "centre-test", login=login)
    try:
        js = centre.jetstream()
        before = await links_until(pods[0], secret, {"depot-a": False, "depot-b": False})  # JetStream has its leader
        await jetstream.provision_fleet(js, FLEET)  # as the operator's provision-streams step does
        with site_server(tmp_path / "depot-a", "depot-a", pods[1], passwords["depot-a"]) as depot_a:
            site = await jetstream.connect(depot_a.url, "site-test", login=SITE_LOGIN)
            try:
                site_js = site.jetstream()
                await jetstream.provision_fleet(site_js, FLEET, "depot-a")
                for seq in range(3):
                    await site_js.publish(subjects.telemetry_subject(FLEET.name, "box-1"), f"reading {seq}".encode())
            finally:
                await site.close()
            now = await links_until(pods[0], secret, {"depot-a": True, "depot-b": False})
            assert sitelinks.reconnected(before, now) == ["depot-a"]
            assert await sitelinks.rearm(pods[0].url, FLEET, TIMEOUT, login, None) == [telemetry]
            deadline = time.monotonic() + 15
            while (await js.stream_info(telemetry)).state.messages < 3:
                assert time.monotonic() < deadline, "the site's readings did not reach the centre's stream"
                await asyncio.sleep(0.2)
            sources = (await js.stream_info(telemetry)).config.sources or []
            assert len(sources) == 2, "re-armed: both sites' sources are back"
    finally:
        await centre.close()
