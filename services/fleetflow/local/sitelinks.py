"""The hub's watch over its edge sites' leaf connections.

After a link outage nats-server retries a stream's source with a growing back-off (up to two minutes), so a site
that comes back would wait that long before its backlog starts to flow. When a new leaf connection appears, the hub
re-arms every sourcing stream instead: it removes the sources and adds them again, and nats-server resumes each
after the last origin sequence the stream holds (from the Nats-Stream-Source headers), so catch-up starts at once
and nothing arrives twice (docs/edge.md)."""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import nats.errors
import structlog
from nats.aio.client import Client

from fleetflow.runtime.edgelink import rearm_sources

log = structlog.get_logger(__name__)

POLL = 1.0
UNAVAILABLE = (nats.errors.Error, OSError, TimeoutError, aiohttp.ClientError)


@dataclass(frozen=True)
class LeafLink:
    """One leaf connection as the hub's /leafz shows it; bytes as the hub counts them (in: from the site)."""

    name: str  # the site server's name
    address: str
    in_bytes: int
    out_bytes: int
    account: str = ""  # the hub's account the site logged in to: one per site (edgelink.site_account)

    @classmethod
    def from_leafz(cls, entry: dict[str, Any]) -> "LeafLink":
        address = f"{entry.get('ip')}:{entry.get('port')}"
        return cls(str(entry.get("name", "?")), address, int(entry.get("in_bytes", 0)), int(entry.get("out_bytes", 0)),
                   str(entry.get("account", "")))  # fmt: skip


async def leaf_links(monitor_url: str) -> list[LeafLink]:
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(f"{monitor_url}/leafz") as got:
        return [LeafLink.from_leafz(entry) for entry in (await got.json()).get("leafs") or []]


class SiteLinks:
    """Polls the hub's leaf connections; on each new one, re-arms the sourcing streams."""

    def __init__(self, monitor_url: str, connect: Callable[[], Awaitable[Client]], streams: list[str],
                 observe: Callable[[list[LeafLink], Client], Awaitable[None]] | None = None):  # fmt: skip
        """`observe(links, connection)`, if given, is called every round with the links and a connection to the
        hub's NATS (sitestates.py)."""
        self.monitor_url, self.connect, self.streams, self.observe = monitor_url, connect, streams, observe
        self.links: list[LeafLink] = []
        self.rearmed = 0  # how many times the sources were re-armed: a test and the logs can tell
        self._revocations: Callable[[], frozenset[str]] = frozenset
        self._on_revoked: Callable[[], None] = lambda: None

    def watch_revocations(self, revoked: Callable[[], frozenset[str]], reload: Callable[[], None]) -> None:
        """Call `reload` whenever the set `revoked()` returns changes (fleetflow edge revoke, or readmitting)."""
        self._revocations, self._on_revoked = revoked, reload

    async def run(self, stop: asyncio.Event) -> None:
        known: set[tuple[str, str]] = set()
        revoked = self._revocations()
        while not stop.is_set():
            if (now_revoked := self._revocations()) != revoked:
                revoked = now_revoked
                self._on_revoked()
                log.info("edge site logins reloaded", revoked=sorted(revoked))
            try:
                self.links = await leaf_links(self.monitor_url)
                current = {(link.name, link.address) for link in self.links}
                if current - known:
                    await self._rearm()
                known = current
                if self.observe:
                    await self._observe(self.observe)
            except UNAVAILABLE as exc:  # the hub's NATS restarting: look again next round
                log.warning("cannot look at the edge sites' links yet", error=str(exc) or type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL)

    async def _observe(self, observe: Callable[[list[LeafLink], Client], Awaitable[None]]) -> None:
        nc = await self.connect()
        try:
            await observe(self.links, nc)
        finally:
            await nc.close()

    async def _rearm(self) -> None:
        nc = await self.connect()
        try:
            js = nc.jetstream()
            for stream in self.streams:
                await rearm_sources(js, stream)
        finally:
            await nc.close()
        self.rearmed += 1
        log.info(
            "edge site connected; sources re-armed", streams=self.streams, links=[link.name for link in self.links]
        )
