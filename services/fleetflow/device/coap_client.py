"""A device's CoAP connection to the gateway (aiocoap): confirmable POSTs of telemetry, JSON or CBOR, block-wise
when large; commands by observing the device's command resource; results posted back.

async with CoapDevice("coap://127.0.0.1:5683", "demo", "pump-1", token) as dev:
    answer = await dev.send([{"seq": 1, "ts": 1700000000000, "metrics": {"temperature": 4.2}}])
    command = await dev.commands.get()      # needs observe_commands() first
    await dev.report(command["id"], "succeeded")
"""

import asyncio
import contextlib
from typing import Any
from urllib.parse import quote

import cbor2
import msgspec
from aiocoap import GET, POST, Context, Message, error
from aiocoap.numbers.contentformat import ContentFormat

_json = msgspec.json.Encoder().encode


class CoapUnreachable(ConnectionError):
    """No answer came (the gateway is away or the network lost every retransmission); send again later."""


def http_status(code: Any) -> int:
    """The HTTP status a CoAP response code stands for (2.04 -> 202, as HTTP answers telemetry; 4.29 -> 429)."""
    if code.is_successful():
        return 202
    return int(code.class_) * 100 + (int(code) & 0x1F)


class CoapDevice:
    """Answers have the HTTP answer's shape plus `status`: 202 with accepted/duplicate/firstSeq/lastSeq, or the
    refusal's status with error/detail. Observed commands land in `commands` (an asyncio.Queue of dicts)."""

    def __init__(self, base_url: str, fleet: str, device: str, token: str, cbor: bool = False):
        self.base = f"{base_url.rstrip('/')}/v1/fleets/{fleet}/devices/{device}"
        self.query = f"?token={quote(token)}"
        self.cbor = cbor
        self.commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._seen: set[str] = set()
        self._context: Context | None = None
        self._observer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "CoapDevice":
        await self.connect()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def connect(self) -> None:
        self._context = await Context.create_client_context()

    async def close(self) -> None:
        if self._observer is not None:
            self._observer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._observer
        if self._context is not None:
            await self._context.shutdown()
            self._context = None

    async def send(self, readings: list[dict[str, Any]], timeout: float = 30.0) -> dict[str, Any]:
        """POST one batch (confirmable, retransmitted by aiocoap) and return the gateway's answer."""
        return await self._post(f"{self.base}/telemetry", {"readings": readings}, timeout)

    async def report(self, command_id: str, status: str, detail: str = "", timeout: float = 30.0) -> dict[str, Any]:
        """Report how a command ended ("succeeded", "failed" or "rejected"); the gateway's answer."""
        answer = await self._post(f"{self.base}/commands/{command_id}/result", {"status": status, "detail": detail},
                                  timeout)  # fmt: skip
        return {**answer, "status": 200} if answer["status"] == 202 else answer

    async def observe_commands(self) -> dict[str, Any]:
        """Start observing the device's commands; each new one is put into `commands` once. Returns the first
        answer: status 200 with the commands outstanding, or the refusal (then nothing is observed)."""
        request = self._ctx().request(Message(code=GET, uri=f"{self.base}/commands{self.query}", observe=0))
        first = await request.response
        self._take(first)
        if not first.code.is_successful():
            return {"status": http_status(first.code), **_decode(first)}
        self._observer = asyncio.create_task(self._follow(request))
        return {"status": 200, **_decode(first)}

    async def _follow(self, request: Any) -> None:
        with contextlib.suppress(error.Error):
            async for notification in request.observation:
                self._take(notification)

    def _take(self, response: Message) -> None:
        if not response.code.is_successful():
            return
        for command in _decode(response).get("commands", []):
            if command["id"] not in self._seen:
                self._seen.add(command["id"])
                self.commands.put_nowait(command)

    async def _post(self, uri: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        payload = cbor2.dumps(body) if self.cbor else _json(body)
        fmt = ContentFormat.CBOR if self.cbor else ContentFormat.JSON
        message = Message(code=POST, uri=uri + self.query, payload=payload, content_format=fmt)
        try:
            response = await asyncio.wait_for(self._ctx().request(message).response, timeout)
        except (error.NetworkError, TimeoutError) as exc:
            raise CoapUnreachable(f"no answer from {uri}: {exc or type(exc).__name__}") from None
        return {"status": http_status(response.code), **_decode(response)}

    def _ctx(self) -> Context:
        if self._context is None:
            raise CoapUnreachable("the CoAP context is not open; call connect() first")
        return self._context


def _decode(response: Message) -> dict[str, Any]:
    if not response.payload:
        return {}
    if response.opt.content_format == ContentFormat.CBOR:
        return dict(cbor2.loads(response.payload))
    return dict(msgspec.json.decode(response.payload))
