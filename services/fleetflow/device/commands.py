"""A device's command channel over HTTP: long-poll for commands, report each one's result."""

from typing import Any

import aiohttp


class HttpCommands:
    """`poll()` waits up to `wait` seconds for commands (each is delivered once, in order); `report()` tells
    the gateway how a command ended: "succeeded", "failed" or "rejected"."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, fleet: str, device: str, token: str):
        self.session = session
        self.url = f"{base_url.rstrip('/')}/v1/fleets/{fleet}/devices/{device}/commands"
        self.headers = {"Authorization": f"Bearer {token}"}

    async def poll(self, wait: float = 25.0) -> list[dict[str, Any]]:
        """Commands now due for this device; an empty list when none arrived within `wait` seconds."""
        async with self.session.get(
            self.url,
            params={"wait": str(wait)},
            headers=self.headers,
            timeout=aiohttp.ClientTimeout(total=wait + 10),
        ) as response:
            body = await response.json(content_type=None)
            if response.status != 200:
                raise CommandChannelError(response.status, body)
            return list(body["commands"])

    async def report(self, command_id: str, status: str, detail: str = "") -> dict[str, Any]:
        async with self.session.post(
            f"{self.url}/{command_id}/result",
            json={"status": status, "detail": detail},
            headers=self.headers,
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response:
            body = await response.json(content_type=None)
            if response.status != 200:
                raise CommandChannelError(response.status, body)
            return dict(body)


class CommandChannelError(Exception):
    """The gateway refused a command request; `body` holds its `error` and `detail`."""

    def __init__(self, status: int, body: Any):
        self.status, self.body = status, body
        super().__init__(f"gateway answered {status}: {body}")
