"""Edge sites of a DeviceFleet: where a site's devices connect when it runs on its own (`fleetflow edge up`), what
it keeps while its link to the centre is down, and what crosses the link when it is up."""

from typing import Literal, Self

from pydantic import Field, model_validator

from fleetflow.api import quantities
from fleetflow.api.common import Duration, Model, ResourceName, Size

# What a site's edge pipelines produce that may cross a metered link (their raw and late readings stay at the site).
FORWARDABLE_RECORDS = ("aggregates", "alerts")


class SiteStorage(Model):
    """The site's disk budget for telemetry: what it keeps while the link is down, and what happens when full."""

    max_bytes: Size = Field(default="1Gi", description="Disk budget of the site's telemetry stream.")
    max_age: Duration = Field(default="7d", description="The longest outage the site's telemetry survives.")
    when_full: Literal["RejectNew", "DropOldest"] = Field(
        default="RejectNew",
        description="RejectNew: the site gateway refuses new readings (507 storage_full) and keeps what it has; "
        "DropOldest: the oldest batches go, counted in `fleetflow edge up`'s progress lines.",
    )

    @property
    def max_bytes_value(self) -> int:
        return quantities.parse_bytes(self.max_bytes)

    @property
    def max_age_seconds(self) -> float:
        return quantities.parse_duration(self.max_age)


class SiteForwarding(Model):
    """What crosses the link to the centre: raw readings, and/or records of the site's edge pipelines."""

    readings: bool = Field(default=True, description="Source the site's raw telemetry into the centre's stream.")
    records: list[Literal["aggregates", "alerts"]] = Field(
        default_factory=list,
        description="Records of the site's edge pipelines the centre receives and stores (each edge pipeline's "
        "writer runs in the centre too).",
    )


class EdgeSite(Model):
    """A site with its own NATS (a leaf node of the fleet's NATS), gateway and edge pipelines."""

    name: ResourceName
    pipelines: list[ResourceName] = Field(
        default_factory=list,
        description="Pipelines of this fleet that run at the site (and not in the centre): local decisions.",
    )
    storage: SiteStorage = Field(default_factory=SiteStorage)
    forward: SiteForwarding = Field(default_factory=SiteForwarding)

    @model_validator(mode="after")
    def _something_crosses_or_says_so(self) -> Self:
        if self.forward.records and not self.pipelines:
            raise ValueError(
                f"site {self.name!r}: forward.records {self.forward.records} names records of edge pipelines, but "
                "the site lists no pipelines; add the Pipeline names under pipelines"
            )
        return self


def check_unique_sites(sites: list[EdgeSite]) -> None:
    """Site names are JetStream domains and leaf-node users: one per fleet."""
    seen: set[str] = set()
    for site in sites:
        if site.name in seen:
            raise ValueError(f"sites: {site.name!r} is declared twice; each site needs its own name")
        seen.add(site.name)
