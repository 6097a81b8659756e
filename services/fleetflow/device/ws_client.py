"""A device's WebSocket session with the gateway: telemetry up (each batch answered in order), commands down,
results up — on the gateway's HTTP port.

async with aiohttp.ClientSession() as http, WsDevice(http, "http://127.0.0.1:8080", "demo", "pump-1", token) as dev:
    answer = await dev.send([{"seq": 1, "ts": 1700000000000, "metrics": {"temperature": 4.2}}])
    command = await dev.commands.get()      # {"id", "name", "params", "createdMs", "expiresMs"}
    await dev.report(command["id"], "succeeded")
"""

import asyncio
import collections
import contextlib
from typing import Any

import aiohttp

SUBPROTOCOL = "fleetflow.v1"


class SessionClosed(ConnectionError):
    """The session ended (gateway gone, replaced, network down); whatever was not answered must be resent."""


def session_url(base_url: str, fleet: str, device: str) -> str:
    """The session's URL from the gateway's HTTP base URL (http -> ws, https -> wss) or a ws:// one."""
    base = base_url.rstrip("/")
    if base.startswith("http"):
        base = "ws" + base.removeprefix("http")
    return f"{base}/v1/fleets/{fleet}/devices/{device}/ws"


class WsDevice:
    """One device on one session. Pushed commands land in `commands` (an asyncio.Queue of dicts). Answers
    have the HTTP answer's shape plus `status`: 202 with accepted/duplicate/firstSeq/lastSeq, or the refusal's
    status with error/detail."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, fleet: str, device: str, token: str,
                 heartbeat: float = 20.0):  # fmt: skip
        self.http = http
        self.url = session_url(base_url, fleet, device)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.heartbeat = heartbeat
        self.commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._answers: collections.deque[asyncio.Future[dict[str, Any]]] = collections.deque()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._closed_because: SessionClosed | None = None

    async def __aenter__(self) -> "WsDevice":
        await self.connect()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the session (commands queued while offline start arriving); SessionClosed if refused."""
        try:
            self._ws = await self.http.ws_connect(self.url, headers=self.headers, protocols=(SUBPROTOCOL,),
                                                  heartbeat=self.heartbeat)  # fmt: skip
        except aiohttp.WSServerHandshakeError as exc:
            raise SessionClosed(f"the gateway refused the session: {exc.status} {exc.message}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise SessionClosed(f"cannot reach {self.url}: {exc}") from None
        self._closed_because = None
        self._reader = asyncio.create_task(self._read(self._ws))

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    @property
    def connected(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def send(self, readings: list[dict[str, Any]], timeout: float = 10.0) -> dict[str, Any]:
        """Send one batch and wait for its answer; SessionClosed if the session ended before it came."""
        return await self._request({"type": "telemetry", "readings": readings}, timeout)

    async def report(self, command_id: str, status: str, detail: str = "", timeout: float = 10.0) -> dict[str, Any]:
        """Report how a command ended ("succeeded", "failed" or "rejected"); the gateway's answer."""
        return await self._request({"type": "result", "id": command_id, "status": status, "detail": detail}, timeout)

    async def _request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        if not self.connected or self._ws is None:
            raise self._closed_because or SessionClosed("the session is not open")
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        async with self._send_lock:  # answers come back in the order of the messages
            self._answers.append(answer)
            try:
                await self._ws.send_json(message)
            except (ConnectionError, RuntimeError) as exc:
                answer.cancel()
                raise SessionClosed(f"writing to the session failed: {exc}") from None
        return await asyncio.wait_for(answer, timeout)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for message in ws:
                if message.type is aiohttp.WSMsgType.TEXT:
                    self._dispatch(message.json())
        finally:
            self._closed_because = SessionClosed(f"the session ended (close code {ws.close_code})")
            while self._answers:
                waiting = self._answers.popleft()
                if not waiting.done():
                    waiting.set_exception(self._closed_because)

    def _dispatch(self, frame: dict[str, Any]) -> None:
        kind = frame.pop("type", None)
        if kind == "command":
            self.commands.put_nowait(frame)
            return
        if not self._answers:
            return
        answer = self._answers.popleft()
        if answer.done():
            return
        if kind == "ack":
            answer.set_result({"status": 202, **frame})
        else:  # "reported" or "error" (which carries its status)
            answer.set_result({"status": 200, **frame} if kind == "reported" else frame)
