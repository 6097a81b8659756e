"""The centre's gateway pushes the commands of an edge site's devices to that site, and follows what happens to them
there (docs/edge.md, Commands).

A device is at the site its latest reading in the centre was sourced from (the reading's `Nats-Stream-Source`
header); a device whose latest reading a gateway of the centre stored, or that sent none, is the centre's. For a
queued command of a site's device the gateway:

1. claims it for the site (`queued` → `forwarded`, compare-and-set): from then on no gateway of the centre delivers
   it, so the device gets it at most once even if it also connects to the centre;
2. pushes it to the site's command intake (a service of the site's account only the fleets' account imports),
   with its id as Nats-Msg-Id, until the site's command stream acknowledges it (a repeated push is a duplicate
   there) or its TTL passes first (`expired`, in the centre; the site never received it);
3. once stored, copies the site's record of it into the centre's (read over the site's JetStream API): `delivered`,
   then the device's result, or `expired` by the site's own gateway, which never hands out a command past its TTL.

While the link is down each step waits and is tried again every round. A command the site stored but whose fate the
centre has not heard yet stays `forwarded` (or `delivered`): the centre does not guess."""

import asyncio
import time
from collections.abc import Callable

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from fleetflow.api import DeviceFleet
from fleetflow.runtime import edgelink, subjects
from fleetflow.runtime.codec import Command
from fleetflow.runtime.commands import (
    DELIVERED,
    EXPIRED,
    FORWARDED,
    QUEUED,
    CommandError,
    CommandRecord,
    CommandStore,
    Transition,
    follow_commands,
    now_ms,
)

log = structlog.get_logger(__name__)
PUSH_TIMEOUT_S = 2.0  # a push unanswered this long is tried again next round (a link that is down answers at once)
FOLLOWED = frozenset({FORWARDED, DELIVERED})  # states in which the site still decides


def forwarded_detail(site: str) -> str:
    return f"to site {site}"


def stored_detail(site: str) -> str:
    return f"stored at site {site}"


def forwarded_site(record: CommandRecord) -> str | None:
    """The site the command was forwarded to (its first `forwarded` transition), if it was."""
    for transition in record.history:
        if transition.state == FORWARDED and transition.detail.startswith("to site "):
            return transition.detail.removeprefix("to site ")
    return None


def stored_at(record: CommandRecord, site: str) -> int | None:
    """How many transitions of the centre's history precede the site's own: those up to the site's acknowledgement
    of the push. None while the site has not acknowledged it."""
    for index, transition in enumerate(record.history):
        if transition.state == FORWARDED and transition.detail == stored_detail(site):
            return index + 1
    return None


def mirrored(centre: CommandRecord, at_site: CommandRecord, site: str) -> CommandRecord | None:
    """The centre's record once it shows what the site recorded after storing the command: the centre's history up
    to the site's acknowledgement, then the site's transitions after its own `queued` (a command back to `queued` at
    the site is still `forwarded` from the centre's view). None if that changes nothing."""
    own = stored_at(centre, site)
    if own is None:
        return None
    copied = [
        Transition(state=FORWARDED if t.state == QUEUED else t.state, at_ms=t.at_ms,
                   detail=f"at site {site}" + (f": {t.detail}" if t.detail else ""))
        for t in at_site.history[1:]
    ]  # fmt: skip
    history = [*centre.history[:own], *copied]
    state = FORWARDED if at_site.state == QUEUED else at_site.state
    if state == centre.state and history == centre.history:
        return None
    return CommandRecord(command=centre.command, state=state, history=history)


class DeviceSites:
    """Which site each device is at, by its latest reading in the centre; each answer is kept `keep_s` seconds, so a
    fleet with many waiting commands asks once per device, and a device that moved is followed within that time."""

    def __init__(self, js: JetStreamContext, fleet: DeviceFleet, keep_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.js, self.fleet, self.keep_s, self.clock = js, fleet, keep_s, clock
        self._known: dict[str, tuple[float, str | None]] = {}

    async def site_of(self, device: str) -> str | None:
        """The site the device's latest reading in the centre came from; None: the centre's, or no reading yet."""
        now = self.clock()
        known = self._known.get(device)
        if known is not None and now - known[0] < self.keep_s:
            return known[1]
        site = await self._latest_origin(device)
        self._known[device] = (now, site)
        return site

    async def _latest_origin(self, device: str) -> str | None:
        stream = subjects.telemetry_stream(self.fleet.name)
        try:
            latest = await self.js.get_last_msg(stream, f"ff.{self.fleet.name}.{subjects.TELEMETRY}.*.{device}")
        except NotFoundError:
            return None
        return edgelink.origin_site(self.fleet, (latest.headers or {}).get(edgelink.STREAM_SOURCE_HEADER))


class SiteCommandForwarder:
    """Follows the centre's command stream and moves each command of a site's device along the steps above."""

    def __init__(self, nc: Client, store: CommandStore, fleet: DeviceFleet, sites: DeviceSites | None = None):
        self.nc, self.js, self.store, self.fleet = nc, nc.jetstream(), store, fleet
        self.sites = sites or DeviceSites(self.js, fleet)
        self._open: dict[tuple[str, str], Command] = {}  # commands the centre has not seen finish yet
        self._read: set[tuple[str, str]] = set()  # open commands whose record was read once: queued or forwarded
        self._forwarded: set[tuple[str, str]] = set()  # open commands forwarded to a site
        self._site_stores: dict[str, CommandStore] = {}  # each site's state bucket, read over its JetStream API
        self._unreachable: set[str] = set()  # sites that did not answer this round: not asked again until the next

    async def run(self, stop: asyncio.Event, tick: float = 0.5) -> None:
        await follow_commands(self.js, self.fleet.name, self._on_command, self.round, stop, tick)

    async def _on_command(self, command: Command) -> None:
        self._open[(command.device, command.id)] = command

    async def round(self) -> None:
        """Move every open command one step if it can; drop those the centre has no more to do for."""
        self._unreachable.clear()
        for key, command in list(self._open.items()):
            try:
                finished = await self._advance(key, command)
            except (nats.errors.Error, TimeoutError) as exc:  # the centre's NATS away: next round
                log.warning("cannot move a site's command on yet", command=command.id, error=str(exc) or repr(exc))
                continue
            except CommandError:  # its record moved meanwhile (or went): look again next round
                continue
            if finished:
                self._open.pop(key, None)
                self._read.discard(key)
                self._forwarded.discard(key)

    async def _advance(self, key: tuple[str, str], command: Command) -> bool:
        """One step for one command; True once nothing is left for the centre to do."""
        site = await self.sites.site_of(command.device)
        if site is None and key in self._read and key not in self._forwarded:
            # Still the centre's device: its gateway delivers or expires the command, nothing to read here.
            return now_ms() >= command.created_ms + command.ttl_ms
        record = await self.store.get(command.device, command.id)
        if record is None:  # the gateway's expiry records it as queued first
            return False
        self._read.add(key)
        if record.state == QUEUED:
            if now_ms() >= record.expires_ms:
                return True  # the centre's expiry moves it to expired
            if site is None:
                return False  # the centre's device, for now
            try:
                record = await self.store.transition(command.device, command.id, FORWARDED, frozenset({QUEUED}),
                                                     forwarded_detail(site))  # fmt: skip
            except CommandError:
                return False  # a gateway took it meanwhile: look again next round
            log.info("command forwarded to its device's site", command=command.id, device=command.device, site=site)
        forwarded_to = forwarded_site(record)
        if record.state not in FOLLOWED or forwarded_to is None:
            return True
        self._forwarded.add(key)
        if stored_at(record, forwarded_to) is None:
            return await self._push(record, forwarded_to)
        if forwarded_to not in self._unreachable:
            await self._follow(record, forwarded_to)
        return False

    async def _push(self, record: CommandRecord, site: str) -> bool:
        """Push the command to its site until the site's stream stores it; True if its TTL passed first."""
        command = record.command
        if now_ms() >= record.expires_ms:
            expired = await self._expire_unstored(record, site)
            log.info("command expired before its site stored it", command=command.id, site=site, moved=expired)
            return True
        if site in self._unreachable:
            return False
        domain = edgelink.site_domain(self.fleet.name, site)
        try:
            await self.js.publish(edgelink.site_command_subject(domain, command.device), msgspec.json.encode(command),
                                  headers={"Nats-Msg-Id": command.id}, timeout=PUSH_TIMEOUT_S)  # fmt: skip
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError):
            self._unreachable.add(site)  # the link is down (or slow): push again next round
            return False
        await self.store.transition(command.device, command.id, FORWARDED, frozenset({FORWARDED}),
                                    stored_detail(site))  # fmt: skip
        log.info("command stored at its device's site", command=command.id, site=site)
        return False

    async def _expire_unstored(self, record: CommandRecord, site: str) -> bool:
        try:
            await self.store.transition(record.command.device, record.command.id, EXPIRED, frozenset({FORWARDED}),
                                        f"ttl passed before site {site} stored it",
                                        at_ms=record.expires_ms)  # fmt: skip
        except CommandError:
            return False
        return True

    async def _follow(self, record: CommandRecord, site: str) -> None:
        """Copy what the site recorded of the command into the centre's record (compare-and-set)."""
        command = record.command
        try:
            at_site = await (await self._site_store(site)).get(command.device, command.id)
        except (nats.errors.Error, TimeoutError):
            self._site_stores.pop(site, None)  # the link is down: open it again next round
            self._unreachable.add(site)
            return
        if at_site is None or (merged := mirrored(record, at_site, site)) is None:
            return
        if not await self.store.replace(record, merged):
            return  # it moved meanwhile: look again next round
        log.info("command state at its site", command=command.id, site=site, state=merged.state)

    async def _site_store(self, site: str) -> CommandStore:
        if site not in self._site_stores:
            js: JetStreamContext = self.nc.jetstream(domain=edgelink.site_domain(self.fleet.name, site), timeout=2)
            bucket = subjects.command_state_bucket(self.fleet.name)
            self._site_stores[site] = CommandStore(await js.key_value(bucket), self.fleet.name, js)
        return self._site_stores[site]
