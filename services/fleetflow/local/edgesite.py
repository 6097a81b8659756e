"""An edge site on this machine (`fleetflow edge up`): the local platform with the site's share of the YAML (its
fleet and edge pipelines), whose NATS is a leaf node of the hub with a JetStream domain of its own, and whose
telemetry stream is bounded by the site's disk budget. The hub sources what the site forwards (docs/edge.md)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats.errors

from fleetflow.api import Pipeline
from fleetflow.api.sites import EdgeSite
from fleetflow.local.platform import LocalPlatform
from fleetflow.local.resources import ResourceSet
from fleetflow.runtime import edgelink, natsauth, subjects


@dataclass(frozen=True)
class SiteState:
    """What `fleetflow edge up` shows: the link, and the telemetry the site holds against its budget."""

    link_up: bool
    stored_bytes: int
    budget_bytes: int
    batches: int
    removed: int  # batches gone from the front of the stream: by the budget (DropOldest) or by max_age

    def line(self, when_full: str) -> str:
        share = self.stored_bytes / self.budget_bytes if self.budget_bytes else 0.0
        removed = f", dropped oldest {self.removed:,}" if when_full == "DropOldest" else ""
        return (
            f"link to hub {'up' if self.link_up else 'DOWN'}; telemetry {self.stored_bytes:,} of "
            f"{self.budget_bytes:,} bytes ({share:.0%}), {self.batches:,} batches held{removed}"
        )


class EdgePlatform(LocalPlatform):
    def __init__(self, resources: ResourceSet, data_dir: Path, site: EdgeSite, hub_url: str, password: str,
                 nats_port: int | None = None, hub_ca: Path | None = None):  # fmt: skip
        """`resources`: the site's share (resources.site_resources); `password`: the site's on the hub; `hub_ca`:
        for a tls:// hub, the CA that signed its certificate."""
        edgelink.check_hub_url(hub_url)
        super().__init__(resources, data_dir, nats_port)
        self.site, self.hub_url, self.site_name = site, hub_url, site.name
        self.fleet = next(iter(self.resources.fleets.values()))
        self.domain = edgelink.site_domain(self.fleet.name, site.name)
        self.nats.domain, self.nats.server_name = self.domain, f"fleetflow-{self.domain}"
        self.nats.leafnodes = edgelink.leaf_remote_config(
            hub_url, self.domain, password, natsauth.SERVICE_ACCOUNT, str(hub_ca) if hub_ca else None
        )

    def _placed(self, resources: ResourceSet) -> ResourceSet:
        return resources

    def _serve_sites(self, leafnode_listen: tuple[str, int | None] | None) -> None:
        """A site is no hub."""

    def runs_processor(self, pipeline: Pipeline) -> bool:
        return True  # every pipeline here is one of the site's edge pipelines

    def endpoints(self) -> dict[str, Any]:
        site = {"name": self.site.name, "fleet": self.fleet.name, "domain": self.domain, "hub": self.hub_url}
        return {**super().endpoints(), "site": site}

    async def site_state(self) -> SiteState:
        """The link and the budget now; nats errors and OSError if the site's NATS does not answer."""
        nc = await self._connect(connect_timeout=2, max_reconnect_attempts=1)
        try:
            info = await nc.jetstream().stream_info(subjects.telemetry_stream(self.fleet.name))
        finally:
            await nc.close()
        state = info.state
        return SiteState(await self.link_up(), state.bytes, self.site.storage.max_bytes_value, state.messages,
                         max(0, state.first_seq - 1))  # fmt: skip

    async def link_up(self) -> bool:
        """Whether the leaf connection to the hub stands (nats-server's /leafz)."""
        url, timeout = f"{self.nats.monitor_url}/leafz", aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as got:
            return bool((await got.json()).get("leafs"))


UNAVAILABLE = (nats.errors.Error, OSError, TimeoutError, aiohttp.ClientError)
