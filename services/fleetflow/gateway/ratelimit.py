"""Per-device rate limiting with token buckets, counted in readings rather than requests."""

import time
from collections.abc import Callable

from fleetflow.api.devicefleet import RateLimit
from fleetflow.gateway.errors import Rejection

_MAX_TRACKED = 200_000


class DeviceRateLimiter:
    def __init__(self, spec: RateLimit, clock: Callable[[], float] = time.monotonic):
        self.rate = spec.readings_per_second
        self.burst = float(spec.burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # device -> (tokens, last refill)

    def admit(self, device: str, readings: int) -> None:
        """Take `readings` tokens from the device's bucket or raise a 429 that says when to retry."""
        if self.rate <= 0:
            return
        now = self._clock()
        tokens, last = self._buckets.get(device, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if readings > tokens:
            wait = (readings - tokens) / self.rate
            self._buckets[device] = (tokens, now)
            raise Rejection(
                429,
                "rate_limited",
                f"device {device!r} sent {readings} readings above its limit of {self.rate:g}/s "
                f"(burst {self.burst:g}); retry in {wait:.1f}s",
                {"Retry-After": str(max(1, round(wait + 0.5)))},
            )
        if len(self._buckets) >= _MAX_TRACKED and device not in self._buckets:
            self._buckets.clear()  # forgetting idle devices only ever grants them a fresh burst
        self._buckets[device] = (tokens - readings, now)
