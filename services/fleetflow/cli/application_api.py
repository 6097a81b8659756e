"""The application API of a fleet as the CLI reads it (`fleetflow query --api URL`): one GET per page, the
answers decoded into the same records the stores return, so a command prints the same rows from either source.

A refusal of the API (400, 401, 403, 404) is a UsageError with the API's own reason and detail; an API that
cannot answer (5xx, refused connection, timeout, not JSON) is Unavailable."""

import json
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from fleetflow.cli.errors import Unavailable, UsageError
from fleetflow.runtime.codec import AlertEvent, Command, WindowAggregate
from fleetflow.runtime.commands import CommandRecord, Transition
from fleetflow.writer.stores import Page, StoredReading

KEY_ENV = "FLEETFLOW_API_KEY"
TIMEOUT_S = 30.0


def api_url(text: str) -> str:
    """The API's base URL without a trailing slash; UsageError unless it is http(s)://host[:port][/path]."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise UsageError(f"--api {text!r} is not the URL of an application API: use http(s)://HOST:PORT, e.g. the "
                         "fleets.<fleet>.api of endpoints.json")  # fmt: skip
    return text.rstrip("/")


def api_key(given: str | None) -> str:
    """--key, else $FLEETFLOW_API_KEY (which keeps the key out of shell history)."""
    key = given if given is not None else os.environ.get(KEY_ENV)
    if not key:
        raise UsageError(f"--api needs an API key: give --key KEY or set {KEY_ENV} (create one with "
                         "`fleetflow api-key create FLEET --scope read`)")  # fmt: skip
    return key


def segment(value: str) -> str:
    """A path segment; command ids may hold '/', which the API takes as %2F."""
    return quote(value, safe="")


class ApplicationApi:
    """GETs of one API with one key, over one HTTP session."""

    def __init__(self, url: str, key: str, session: aiohttp.ClientSession):
        self.url, self.session = url, session
        self.headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}

    async def get(self, path: str, params: Mapping[str, str | int | None]) -> dict[str, Any]:
        """The JSON object the API answers; params that are None are left out."""
        query = {k: str(v) for k, v in params.items() if v is not None}
        try:
            async with self.session.get(self.url + path, params=query, headers=self.headers) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"cannot reach the application API at {self.url}: {exc or type(exc).__name__}; is "
                              "it running? (`fleetflow up` writes its URL to endpoints.json, fleets.<fleet>.api)"
                              ) from None  # fmt: skip
        body = _json_object(text)
        if status == 200 and body is not None:
            return body
        raise refusal(self.url + path, status, body, text)

    async def fleet_pipelines(self, fleet: str) -> list[str]:
        body = await self.get(f"/v1/fleets/{segment(fleet)}", {})
        return [str(name) for name in body["pipelines"]]

    async def devices(self, fleet: str, pipeline: str | None, limit: int,
                      cursor: str | None) -> tuple[str, Page[StoredReading]]:  # fmt: skip
        """A page of the device registry, each device as its latest reading (stored_ms: when it was last heard
        from), and the pipeline whose store answered."""
        body = await self.get(f"/v1/fleets/{segment(fleet)}/devices",
                              {"pipeline": pipeline, "limit": limit, "cursor": cursor})  # fmt: skip
        return str(body["pipeline"]), Page([_latest(body["fleet"], d) for d in body["devices"]], body["nextCursor"])

    async def device(self, fleet: str, device: str, pipeline: str | None) -> tuple[str, list[StoredReading]]:
        body = await self.get(f"/v1/fleets/{segment(fleet)}/devices/{segment(device)}", {"pipeline": pipeline})
        return str(body["pipeline"]), [_latest(body["fleet"], body)]

    async def readings(self, fleet: str, device: str, pipeline: str | None, since: int, until: int, limit: int,
                       cursor: str | None) -> tuple[str, Page[StoredReading]]:  # fmt: skip
        """The readings page and the pipeline whose store answered."""
        body = await self.get(f"/v1/fleets/{segment(fleet)}/devices/{segment(device)}/readings",
                              {"pipeline": pipeline, **_page(since, until, limit, cursor)})  # fmt: skip
        # The API does not serve when a reading was stored; nothing `fleetflow query` prints shows it.
        items = [StoredReading(fleet=body["fleet"], device=body["device"], seq=r["seq"], ts=r["ts"],
                               metrics=r["metrics"], stored_ms=0) for r in body["readings"]]  # fmt: skip
        return str(body["pipeline"]), Page(items, body["nextCursor"])

    async def aggregates(self, fleet: str, pipeline: str, device: str | None, since: int, until: int, limit: int,
                         cursor: str | None) -> Page[WindowAggregate]:  # fmt: skip
        body = await self.get(f"/v1/fleets/{segment(fleet)}/pipelines/{segment(pipeline)}/aggregates",
                              {"device": device, **_page(since, until, limit, cursor)})  # fmt: skip
        return Page([_aggregate(body["fleet"], a) for a in body["aggregates"]], body["nextCursor"])

    async def alerts(self, fleet: str, pipeline: str, device: str | None, since: int, until: int, limit: int,
                     cursor: str | None) -> Page[AlertEvent]:  # fmt: skip
        body = await self.get(f"/v1/fleets/{segment(fleet)}/pipelines/{segment(pipeline)}/alerts",
                              {"device": device, **_page(since, until, limit, cursor)})  # fmt: skip
        return Page([_alert(body["fleet"], a) for a in body["alerts"]], body["nextCursor"])

    async def device_commands(self, fleet: str, device: str, pipeline: str | None, since: int, until: int,
                              limit: int, cursor: str | None) -> tuple[str, Page[CommandRecord]]:  # fmt: skip
        """A page of the device's command log, newest first, and the pipeline whose store answered."""
        body = await self.get(f"/v1/fleets/{segment(fleet)}/devices/{segment(device)}/commands",
                              {"pipeline": pipeline, **_page(since, until, limit, cursor)})  # fmt: skip
        return str(body["pipeline"]), Page([command_record(c) for c in body["commands"]], body["nextCursor"])

    async def commands(self, fleet: str, limit: int, cursor: str | None) -> Page[CommandRecord]:
        """A page of the fleet's commands from its command state on NATS, oldest first."""
        body = await self.get(f"/v1/fleets/{segment(fleet)}/commands", {"limit": limit, "cursor": cursor})
        return Page([command_record(c) for c in body["commands"]], body["nextCursor"])


@asynccontextmanager
async def connect(url: str, key: str) -> AsyncIterator[ApplicationApi]:
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield ApplicationApi(url, key, session)


def _page(since: int, until: int, limit: int, cursor: str | None) -> dict[str, str | int | None]:
    return {"from": since, "to": until, "limit": limit, "cursor": cursor}


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        body = json.loads(text)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def refusal(where: str, status: int, body: dict[str, Any] | None, text: str) -> Exception:
    """UsageError for what the request got wrong (4xx), Unavailable for what the API cannot do now."""
    if body is not None and "error" in body:
        said = f"{status} {body['error']}: {body.get('detail', '')}"
    else:
        said = f"{status} {' '.join(text.split())[:200] or '(empty body)'}"
    if 400 <= status < 500:
        return UsageError(f"the application API refused GET {where}: {said}")
    return Unavailable(f"the application API could not answer GET {where}: {said}")


def _latest(fleet: str, d: dict[str, Any]) -> StoredReading:
    latest = d["latest"]
    return StoredReading(fleet=fleet, device=d["device"], seq=latest["seq"], ts=latest["ts"],
                         metrics=latest["metrics"], stored_ms=d["lastSeenMs"])  # fmt: skip


def _aggregate(fleet: str, a: dict[str, Any]) -> WindowAggregate:
    return WindowAggregate(fleet=fleet, pipeline=a["pipeline"], step=a["step"], group=a["group"], metric=a["metric"],
                           window_start_ms=a["windowStartMs"], window_end_ms=a["windowEndMs"], count=a["count"],
                           min=a["min"], max=a["max"], mean=a["mean"], sum=a["sum"], last=a["last"],
                           percentiles=a["percentiles"])  # fmt: skip


def _alert(fleet: str, a: dict[str, Any]) -> AlertEvent:
    return AlertEvent(fleet=fleet, pipeline=a["pipeline"], rule=a["rule"], device=a["device"], state=a["state"],
                      severity=a["severity"], ts_ms=a["tsMs"], values=a["values"], message=a["message"])  # fmt: skip


def command_record(c: dict[str, Any]) -> CommandRecord:
    """The record whose to_json() is `c`."""
    command = Command(id=c["id"], fleet=c["fleet"], device=c["device"], name=c["name"], params=c["params"],
                      created_ms=c["createdMs"], ttl_ms=c["ttlMs"], source=c["source"])  # fmt: skip
    history = [Transition(state=t["state"], at_ms=t["atMs"], detail=t["detail"]) for t in c["history"]]
    return CommandRecord(command=command, state=c["state"], history=history)
