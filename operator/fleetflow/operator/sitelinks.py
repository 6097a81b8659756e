"""The operator's watch over a fleet's edge-site links on a cluster (docs/edge.md, "Kubernetes"): what
`status.sites`, the `Sites` column of `kubectl get df` and the `fleetflow_site_*` metrics show.

Why a request to the system account and not the monitoring port: /leafz listens on each NATS pod's loopback only
(it has no authentication), and a site's leaf connection lands on any one of the fleet's servers. One request,
`$SYS.REQ.SERVER.PING.LEAFZ`, is answered by every server with its /leafz, over the client port the operator already
reaches, as a system-account user that may ask nothing else (builders/sites.py). The backlog is the `lag` of the
sourcing streams' sources, which the operator reads as the services' user."""

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from fleetflow.api import DeviceFleet
from fleetflow.operator.builders import sites
from fleetflow.operator.streams import StreamError, connection
from fleetflow.runtime import edgelink, subjects
from fleetflow.runtime.natsauth import NatsLogin


@dataclass(frozen=True)
class SiteLink:
    """One site's link as the hub's servers see it now."""

    name: str
    connected: bool
    received_bytes: int  # from the site, over its current connection(s)
    sent_bytes: int
    backlog_messages: int

    def as_status(self) -> dict[str, Any]:
        return {"name": self.name, "connected": self.connected, "receivedBytes": self.received_bytes,
                "sentBytes": self.sent_bytes, "backlogMessages": self.backlog_messages}  # fmt: skip


async def leaf_connections(nc: Client, servers: int, timeout: float) -> list[dict[str, Any]]:
    """Every server's /leafz entries: wait for `servers` answers, or what came within `timeout` (a server that is
    down holds no link). StreamError if none answered."""
    answers: list[dict[str, Any]] = []
    all_in = asyncio.Event()

    async def answered(msg: Msg) -> None:
        answers.append(json.loads(msg.data))
        if len(answers) >= servers:
            all_in.set()

    inbox = nc.new_inbox()
    subscription = await nc.subscribe(inbox, cb=answered)
    try:
        await nc.publish(sites.LEAFZ_SUBJECT, b"{}", reply=inbox)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), timeout)
    finally:
        await subscription.unsubscribe()
    if not answers:
        raise StreamError(f"no NATS server answered {sites.LEAFZ_SUBJECT} within {timeout}s")
    return [leaf for answer in answers for leaf in (answer.get("data") or {}).get("leafs") or []]


def site_links(fleet: DeviceFleet, leafs: list[dict[str, Any]], lags: dict[str, int]) -> list[SiteLink]:
    """Each declared site, found among the leaf connections by its hub account (one per site)."""
    found = []
    for site in fleet.spec.sites:
        domain = edgelink.site_domain(fleet.name, site.name)
        mine = [leaf for leaf in leafs if leaf.get("account") == edgelink.site_account(domain)]
        received = sum(int(leaf.get("in_bytes") or 0) for leaf in mine)
        sent = sum(int(leaf.get("out_bytes") or 0) for leaf in mine)
        found.append(SiteLink(site.name, bool(mine), received, sent, lags.get(domain, 0)))
    return found


def sourcing_streams(fleet: DeviceFleet) -> list[str]:
    """The centre's streams whose sources reach the sites. Only the telemetry stream's lag is read: it is the
    backlog of every site that forwards readings (records of edge pipelines are few next to it)."""
    return [subjects.telemetry_stream(fleet.name)] if any(site.forward.readings for site in fleet.spec.sites) else []


async def observe(
    url: str, fleet: DeviceFleet, timeout: float, login: NatsLogin, tls: ssl.SSLContext | None
) -> list[SiteLink]:
    """The fleet's site links now: two short connections, the links user's and the services' user's."""
    servers = fleet.spec.nats.managed_or_default.replicas
    links_login = NatsLogin(sites.LINKS_USER, login.password)
    try:
        async with connection(url, timeout, links_login, tls) as nc:
            leafs = await leaf_connections(nc, servers, timeout)
        async with connection(url, timeout, login, tls) as nc:
            lags = await edgelink.source_lags(nc, sourcing_streams(fleet))
    except StreamError:
        raise
    except Exception as exc:
        raise StreamError(f"reading the edge sites' links of fleet {fleet.name!r} at {url} failed: {exc!r}") from exc
    return site_links(fleet, leafs, lags)


def last_seen(fleet: DeviceFleet, previous: list[dict[str, Any]]) -> list[SiteLink]:
    """The declared sites as last recorded in the status, while NATS cannot be asked; a site never seen yet is
    not connected (the hub's NATS is not up for it)."""
    recorded = {entry.get("name"): entry for entry in previous}
    found = []
    for site in fleet.spec.sites:
        entry = recorded.get(site.name) or {}
        found.append(SiteLink(site.name, bool(entry.get("connected")), int(entry.get("receivedBytes") or 0),
                              int(entry.get("sentBytes") or 0), int(entry.get("backlogMessages") or 0)))  # fmt: skip
    return found


def reconnected(before: list[SiteLink], now: list[SiteLink]) -> list[str]:
    """Sites whose link came up since the last look: not connected then, or with fewer bytes received than then (a
    new connection counts from zero)."""
    seen = {link.name: link for link in before}
    return [
        link.name
        for link in now
        if link.connected
        and (
            link.name not in seen
            or not seen[link.name].connected
            or link.received_bytes < seen[link.name].received_bytes
        )
    ]


def rearmed_streams(fleet: DeviceFleet) -> list[str]:
    """Every centre stream that sources from the fleet's sites: telemetry, and the forwarded edge pipelines'."""
    streams = sourcing_streams(fleet)
    return streams + [
        subjects.pipeline_stream(fleet.name, name) for name in sorted(edgelink.forwarded_pipelines(fleet))
    ]


async def rearm(
    url: str, fleet: DeviceFleet, timeout: float, login: NatsLogin, tls: ssl.SSLContext | None
) -> list[str]:
    """Re-arm the sourcing streams, so that a site's backlog flows now rather than after nats-server's retry back-off
    (up to two minutes), as the centre's `fleetflow up` does on each new leaf connection. Returns the streams."""
    done = []
    try:
        async with connection(url, timeout, login, tls) as nc:
            js = nc.jetstream(timeout=timeout)
            for stream in rearmed_streams(fleet):
                try:
                    await edgelink.rearm_sources(js, stream)
                except NotFoundError:
                    continue  # an edge pipeline not provisioned yet
                done.append(stream)
    except StreamError:
        raise
    except Exception as exc:
        raise StreamError(f"re-arming the sourcing streams of fleet {fleet.name!r} at {url} failed: {exc!r}") from exc
    return done


def connected_of(links: list[SiteLink]) -> str:
    """What the `Sites` column shows: connected/declared."""
    return f"{sum(link.connected for link in links)}/{len(links)}"


class SiteMetrics:
    """The fleetflow_site_* series of docs/edge.md, from the operator's last look at each fleet (labels namespace,
    fleet, site). The backlog's age counts from the last look that found the site connected and caught up. Only the
    acting replica reconciles, so only it exports them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, provider: MeterProvider | None = None):
        """`provider`: where the series go; the process's (the operator's /metrics) unless a test gives one."""
        self.clock, self.provider = clock, provider
        self.links: dict[tuple[str, str], list[SiteLink]] = {}  # (namespace, fleet) -> its sites
        self._caught_up_at: dict[tuple[str, str, str], float] = {}
        self._registered = False

    def record(self, namespace: str, fleet: str, links: list[SiteLink] | None) -> None:
        """A fleet's sites as just seen; None forgets the fleet (it has no sites any more)."""
        self._register()
        if links is None:
            self.links.pop((namespace, fleet), None)
            return
        self.links[(namespace, fleet)] = links
        now = self.clock()
        for link in links:
            key = (namespace, fleet, link.name)
            if (link.connected and link.backlog_messages == 0) or key not in self._caught_up_at:
                self._caught_up_at[key] = now

    def backlog_age(self, namespace: str, fleet: str, site: str) -> float:
        return round(self.clock() - self._caught_up_at.get((namespace, fleet, site), self.clock()), 3)

    def _register(self) -> None:
        """On the process's meter provider (the operator's /metrics), once, at first use."""
        if self._registered:
            return
        self._registered = True
        meter = metrics.get_meter("fleetflow.operator.sites", meter_provider=self.provider)
        meter.create_observable_gauge("fleetflow_site_link_up", [self._each(lambda _, s: int(s.connected))], unit="1",
                                      description="1 while the site's leaf connection to the hub stands")  # fmt: skip
        meter.create_observable_gauge("fleetflow_site_backlog_messages", [self._each(lambda _, s: s.backlog_messages)],
                                      unit="1", description="Messages the site holds that the centre has not "
                                      "stored yet, as of the last contact")  # fmt: skip
        meter.create_observable_gauge("fleetflow_site_backlog_age_seconds", [self._each(self._age)], unit="s",
                                      description="Time since the centre was last caught up with the site")  # fmt: skip
        received, sent = self._each(lambda _, s: s.received_bytes), self._each(lambda _, s: s.sent_bytes)
        meter.create_observable_counter("fleetflow_site_link_received_bytes", [received], unit="By",
                                        description="Bytes the hub received from the site")  # fmt: skip
        meter.create_observable_counter("fleetflow_site_link_sent_bytes", [sent], unit="By",
                                        description="Bytes the hub sent to the site")  # fmt: skip

    def _age(self, key: tuple[str, str], link: SiteLink) -> float:
        return self.backlog_age(key[0], key[1], link.name)

    def _each(
        self, value: Callable[[tuple[str, str], SiteLink], float]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observed(_: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(value(key, link), {"namespace": key[0], "fleet": key[1], "site": link.name})
                for key, links in list(self.links.items())
                for link in links
            ]

        return observed


SITE_METRICS = SiteMetrics()
