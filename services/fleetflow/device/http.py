"""A device's HTTP connection to the gateway: POST batches of readings with the device's bearer token."""

from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass(frozen=True)
class SendResult:
    status: int  # HTTP status, or 0 when the gateway could not be reached
    body: dict[str, Any]

    @property
    def acknowledged(self) -> bool:
        return self.status == 202

    @property
    def retryable(self) -> bool:
        """Worth sending again later: the gateway was unreachable, overloaded or rate limiting."""
        return self.status in (0, 429, 500, 502, 503, 504)


class HttpDevice:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, fleet: str, device: str, token: str):
        self.session = session
        self.url = f"{base_url.rstrip('/')}/v1/fleets/{fleet}/devices/{device}/telemetry"
        self.device = device
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def send(self, readings: list[dict[str, Any]], timeout: float = 10.0) -> SendResult:
        """POST one batch; never raises for network trouble (status 0 then)."""
        try:
            async with self.session.post(
                self.url,
                json={"readings": readings},
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                body = await response.json(content_type=None)
                return SendResult(response.status, body if isinstance(body, dict) else {"body": body})
        except (aiohttp.ClientError, TimeoutError) as exc:
            return SendResult(0, {"error": "unreachable", "detail": f"{type(exc).__name__}: {exc}"})
