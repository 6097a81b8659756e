"""Leader election on a coordination.k8s.io Lease, so that of several operator replicas exactly one acts.

kopf's own peering does not elect: operators of equal priority only warn about each other and both go on.
This follows client-go's leaderelection instead: a candidate takes the Lease when it is free or its holder
has not renewed it for `leaseDurationSeconds`, measured on the candidate's own monotonic clock from when it
last saw the record change (so clock skew between nodes does not matter); the holder renews it every
`renew_every` seconds and gives up leading when it could not renew for `renew_deadline` seconds, before any
candidate may take over. Every write carries the resourceVersion it read, so two candidates never both win.
"""

import asyncio
import datetime
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from fleetflow.operator.kube import ApiError, JsonObject, KubeApi, Ref

log = structlog.get_logger(__name__)

LEASE_API = "coordination.k8s.io/v1"
LEASE_ENV = "FLEETFLOW_OPERATOR_LEASE"
IDENTITY_ENV = "FLEETFLOW_OPERATOR_POD_NAME"


class LeadershipLost(Exception):
    """The Lease could not be renewed in time, or another replica holds it now: this replica must stop acting."""


@dataclass(frozen=True)
class LeaseSettings:
    namespace: str
    name: str
    identity: str
    duration: float = 15.0  # a crashed leader's Lease is taken over after this long
    renew_deadline: float = 10.0  # the leader stops acting when it could not renew for this long
    renew_every: float = 2.0  # how often the leader renews and a candidate retries

    def __post_init__(self) -> None:
        if not 0 < self.renew_every < self.renew_deadline < self.duration:
            raise ValueError(
                f"lease timings renew_every={self.renew_every}, renew_deadline={self.renew_deadline}, "
                f"duration={self.duration}: expected 0 < renew_every < renew_deadline < duration"
            )

    @property
    def ref(self) -> Ref:
        return Ref(LEASE_API, "Lease", self.namespace, self.name)

    @classmethod
    def from_environment(cls) -> "LeaseSettings | None":
        """FLEETFLOW_OPERATOR_LEASE = `namespace/name` turns leader election on (the chart sets it); unset or
        empty, the operator acts alone."""
        value = os.environ.get(LEASE_ENV, "").strip()
        if not value:
            return None
        namespace, slash, name = value.partition("/")
        if not slash or not namespace or not name or "/" in name:
            raise ValueError(f"{LEASE_ENV} = {value!r}: expected <namespace>/<lease name>, e.g. fleetflow/fleetflow")
        return cls(namespace=namespace, name=name, identity=default_identity())


def default_identity() -> str:
    """The pod's name (unique among the replicas) plus a random part (unique across its restarts)."""
    pod = os.environ.get(IDENTITY_ENV) or socket.gethostname()
    return f"{pod}_{uuid.uuid4().hex[:8]}"


def _microtime(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _wall_clock() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Leadership:
    """One replica's side of the election. `clock` (monotonic seconds) decides expiry; `wall_clock` only
    fills the Lease's timestamps, which are for people reading it."""

    def __init__(
        self,
        api: KubeApi,
        settings: LeaseSettings,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime.datetime] = _wall_clock,
    ):
        self.api = api
        self.settings = settings
        self._clock = clock
        self._wall_clock = wall_clock
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self.leading = False

    async def acquire(self) -> None:
        """Return once this replica holds the Lease."""
        announced = False
        while not await self._try_acquire_or_renew():
            if not announced:
                log.info("standing by: another operator replica leads", lease=str(self.settings.ref),
                         holder=self._observed[0] if self._observed else None)  # fmt: skip
                announced = True
            await asyncio.sleep(self.settings.renew_every)
        self.leading = True
        log.info("leading", lease=str(self.settings.ref), identity=self.settings.identity)

    async def hold(self) -> None:
        """Renew the Lease until cancelled; raise LeadershipLost when that fails for `renew_deadline`."""
        last_renewed = self._clock()
        while True:
            await asyncio.sleep(self.settings.renew_every)
            try:
                renewed = await self._try_acquire_or_renew()
            except ApiError as exc:
                log.warning("could not renew the lease", lease=str(self.settings.ref), error=str(exc))
                renewed = False
            if renewed:
                last_renewed = self._clock()
            elif self._observed is not None and self._observed[0] not in ("", self.settings.identity):
                self.leading = False
                raise LeadershipLost(f"{self.settings.ref} is held by {self._observed[0]} now")
            elif self._clock() - last_renewed >= self.settings.renew_deadline:
                self.leading = False
                raise LeadershipLost(
                    f"{self.settings.ref} not renewed for {self.settings.renew_deadline:g} s; stop acting"
                )

    async def release(self) -> None:
        """Hand the Lease back, so a standby takes over at its next try instead of after `duration`."""
        if not self.leading:
            return
        self.leading = False
        try:
            lease = await self.api.get(self.settings.ref)
            if (lease.get("spec") or {}).get("holderIdentity") != self.settings.identity:
                return
            patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                     "spec": {"holderIdentity": None, "leaseDurationSeconds": 1}}  # fmt: skip
            await self.api.merge_patch(self.settings.ref, patch)
            log.info("released the lease", lease=str(self.settings.ref))
        except ApiError as exc:  # the others take over after the lease's duration instead
            log.warning("could not release the lease", lease=str(self.settings.ref), error=str(exc))

    async def _try_acquire_or_renew(self) -> bool:
        lease = await self.api.get_or_none(self.settings.ref)
        if lease is None:
            return await self._write(self._create)
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        self._observe(holder, str(spec.get("renewTime") or ""))
        if holder and holder != self.settings.identity and not self._expired(spec):
            return False
        return await self._write(lambda: self._take(lease, holder))

    def _observe(self, holder: str, renew_time: str) -> None:
        if self._observed != (holder, renew_time):
            self._observed = (holder, renew_time)
            self._observed_at = self._clock()

    def _expired(self, spec: dict[str, Any]) -> bool:
        duration = float(spec.get("leaseDurationSeconds") or self.settings.duration)
        return self._clock() - self._observed_at >= duration

    async def _write(self, write: Callable[[], Any]) -> bool:
        try:
            await write()
        except ApiError as exc:
            if exc.status in (409, 422):  # another replica wrote first: it leads, or may
                return False
            raise
        return True

    async def _create(self) -> JsonObject:
        now = _microtime(self._wall_clock())
        body = {
            "apiVersion": LEASE_API,
            "kind": "Lease",
            "metadata": {"name": self.settings.name, "namespace": self.settings.namespace},
            "spec": {**self._spec(now), "acquireTime": now, "leaseTransitions": 0},
        }
        return await self.api.create(body)

    async def _take(self, lease: JsonObject, holder: str) -> JsonObject:
        now = _microtime(self._wall_clock())
        spec = self._spec(now)
        if holder != self.settings.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int((lease.get("spec") or {}).get("leaseTransitions") or 0) + 1
        patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]}, "spec": spec}
        return await self.api.merge_patch(self.settings.ref, patch)

    def _spec(self, now: str) -> dict[str, Any]:
        return {
            "holderIdentity": self.settings.identity,
            "leaseDurationSeconds": max(1, round(self.settings.duration)),
            "renewTime": now,
        }
