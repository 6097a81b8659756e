"""What the hub knows about each edge site's link: whether it is up, how many bytes it carried, and how far the
centre is behind the site (docs/edge.md, Observability).

The hub sees a site through two windows: nats-server's /leafz (the leaf connection, found by the site's account,
with the bytes it carried) and the sources of the hub's sourcing streams (for each, nats-server's `lag`: messages
the site's stream holds that the centre has not stored yet, as of the last contact). While the link is down the
centre cannot know what the site received since, so the backlog's age is measured from the last moment the centre
was caught up: an upper bound of how old the oldest reading the centre has not received can be."""

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from fleetflow.local.sitelinks import LeafLink
from fleetflow.runtime import edgelink
from fleetflow.runtime.edgelink import source_lags as source_lags  # for sitemetrics.py; the operator shares it


@dataclass(frozen=True)
class SiteLinkState:
    """One site, as `fleetflow status` and the metrics show it."""

    fleet: str
    site: str
    link_up: bool
    received_bytes: int  # from the site, over every connection since the hub started
    sent_bytes: int  # to the site, likewise
    backlog_messages: int  # in the site's streams, not yet in the centre's (as of the last contact)
    backlog_age_seconds: float  # since the centre was last caught up with the site; 0 while it is

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class SiteStates:
    """Folds each round of observations (leaf links, source lags) into per-site states. Bytes add up over
    reconnections (each leaf connection counts from zero); the clock is injected for tests."""

    def __init__(self, sites: list[tuple[str, str]], clock: Callable[[], float] = time.monotonic):
        self.sites = sites  # (fleet, site)
        self.clock = clock
        self._closed_bytes: dict[str, tuple[int, int]] = {}  # bytes of a site's connections that have ended
        self._open: dict[str, tuple[str, int, int]] = {}  # a site's current connection: (address, in, out)
        self._caught_up_at: dict[str, float] = {}
        self.states: list[SiteLinkState] = [self._state(fleet, site, {}, {}) for fleet, site in sites]

    def observe(self, links: list[LeafLink], lags: dict[str, int]) -> list[SiteLinkState]:
        by_account = {link.account: link for link in links}
        self.states = [self._state(fleet, site, by_account, lags) for fleet, site in self.sites]
        return self.states

    def _state(self, fleet: str, site: str, links: dict[str, LeafLink], lags: dict[str, int]) -> SiteLinkState:
        domain = edgelink.site_domain(fleet, site)
        link = links.get(edgelink.site_account(domain))
        received, sent = self._bytes(domain, link)
        backlog = lags.get(domain, 0)
        now = self.clock()
        if (link is not None and backlog == 0) or domain not in self._caught_up_at:
            self._caught_up_at[domain] = now
        age = now - self._caught_up_at[domain]
        return SiteLinkState(fleet, site, link is not None, received, sent, backlog, round(age, 3))

    def _bytes(self, domain: str, link: LeafLink | None) -> tuple[int, int]:
        """(received, sent) over every connection of the site so far."""
        closed_in, closed_out = self._closed_bytes.get(domain, (0, 0))
        previous = self._open.pop(domain, None)
        if previous and (link is None or link.address != previous[0]):  # that connection ended
            closed_in, closed_out = closed_in + previous[1], closed_out + previous[2]
            self._closed_bytes[domain] = (closed_in, closed_out)
        if link is None:
            return closed_in, closed_out
        self._open[domain] = (link.address, link.in_bytes, link.out_bytes)
        return closed_in + link.in_bytes, closed_out + link.out_bytes
