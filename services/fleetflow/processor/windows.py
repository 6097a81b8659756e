"""Event-time windows: assign readings, close windows as the watermark passes, and spot late readings.

Each window key (a device, or a label group) has its own watermark: the newest event time seen for the key
minus the step's watermark delay. Window [start, end) closes once the watermark reaches end + allowed
lateness; everything closed so far is remembered as `closed_until`, so a reading for a closed window is
recognised as late. Because the state depends only on the key's own readings, in arrival order, the same
input gives the same aggregates whichever replica runs it and however often it restarts."""

import math
from dataclasses import dataclass

import msgspec

from fleetflow.api.steps import WindowStep
from fleetflow.runtime.codec import WindowAggregate

NEVER = -(2**62)


class Accumulator(msgspec.Struct, array_like=True):
    count: int = 0
    min: float = math.inf
    max: float = -math.inf
    sum: float = 0.0
    last: float = 0.0
    last_ts: int = NEVER
    last_seq: int = NEVER
    values: list[float] = msgspec.field(default_factory=list)

    def add(self, value: float, ts: int, seq: int) -> None:
        self.count += 1
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        self.sum += value
        self.values.append(value)
        if (ts, seq) >= (self.last_ts, self.last_seq):
            self.last, self.last_ts, self.last_seq = value, ts, seq


class KeyWindows(msgspec.Struct):
    """The open windows of one key: window start -> metric -> accumulator."""

    newest_ts: int = NEVER
    closed_until: int = NEVER
    open: dict[int, dict[str, Accumulator]] = msgspec.field(default_factory=dict)


def percentile(sorted_values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default): p=50 of [1, 2, 3, 4] is 2.5."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    rank = p / 100 * (len(sorted_values) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def percentile_name(p: float) -> str:
    return f"p{p:g}"


def window_starts(ts: int, size_ms: int, hop_ms: int) -> list[int]:
    """Starts of every window [start, start + size) holding `ts`; windows start at multiples of the hop."""
    last = ts - ts % hop_ms
    starts = []
    start = last
    while start > ts - size_ms:
        starts.append(start)
        start -= hop_ms
    return starts[::-1]


@dataclass
class Placement:
    """Where one reading went: the windows it joined and how many closed windows it missed (late)."""

    joined: int = 0
    missed: int = 0


class WindowOperator:
    """One window step: per-key windows over the readings it sees."""

    def __init__(self, fleet: str, pipeline: str, step: str, spec: WindowStep, state: dict[str, KeyWindows]):
        self.fleet, self.pipeline, self.step, self.spec = fleet, pipeline, step, spec
        self.keys = state
        self.last_arrival: dict[str, int] = {}

    def add(self, key: str, ts: int, seq: int, metrics: dict[str, float], now_ms: int) -> Placement:
        """Put one reading into its windows (those still open), then close what the watermark passed."""
        windows = self.keys.setdefault(key, KeyWindows())
        self.last_arrival[key] = now_ms
        placement = Placement()
        wanted = self.spec.metrics or list(metrics)
        for start in window_starts(ts, self.spec.size_ms, self.spec.hop_ms):
            if start + self.spec.size_ms <= windows.closed_until:
                placement.missed += 1
                continue
            placement.joined += 1
            accumulators = windows.open.setdefault(start, {})
            for name in wanted:
                if name in metrics:
                    accumulators.setdefault(name, Accumulator()).add(metrics[name], ts, seq)
        windows.newest_ts = max(windows.newest_ts, ts)
        return placement

    def close_passed(self, key: str) -> list[WindowAggregate]:
        """Close the key's windows that its watermark has passed (end + lateness <= watermark)."""
        windows = self.keys[key]
        watermark = windows.newest_ts - self.spec.watermark_delay_ms
        windows.closed_until = max(windows.closed_until, watermark - self.spec.allowed_lateness_ms)
        return self._close(key, windows)

    def close_idle(self, now_ms: int) -> list[WindowAggregate]:
        """Close every open window of keys that sent nothing for the idle timeout (wall clock)."""
        closed = []
        for key, arrived in list(self.last_arrival.items()):
            if now_ms - arrived < self.spec.idle_timeout_ms:
                continue
            windows = self.keys.get(key)
            del self.last_arrival[key]
            if windows is None or not windows.open:
                continue
            windows.closed_until = max(windows.closed_until, max(windows.open) + self.spec.size_ms)
            closed.extend(self._close(key, windows))
        return closed

    def restored(self, now_ms: int) -> None:
        """After loading a checkpoint, idle timers start from now: arrival times are not checkpointed."""
        self.last_arrival = dict.fromkeys(self.keys, now_ms)

    def _close(self, key: str, windows: KeyWindows) -> list[WindowAggregate]:
        out = []
        for start in sorted(s for s in windows.open if s + self.spec.size_ms <= windows.closed_until):
            for metric, acc in sorted(windows.open.pop(start).items()):
                out.append(self._aggregate(key, metric, start, acc))
        return out

    def _aggregate(self, key: str, metric: str, start: int, acc: Accumulator) -> WindowAggregate:
        ordered = sorted(acc.values)
        return WindowAggregate(
            fleet=self.fleet,
            pipeline=self.pipeline,
            step=self.step,
            group=key,
            metric=metric,
            window_start_ms=start,
            window_end_ms=start + self.spec.size_ms,
            count=acc.count,
            min=acc.min,
            max=acc.max,
            mean=acc.sum / acc.count,
            sum=acc.sum,
            last=acc.last,
            percentiles={percentile_name(p): percentile(ordered, p) for p in self.spec.percentiles},
        )


def group_key(spec: WindowStep, device: str, labels: dict[str, str]) -> str | None:
    """ "device=<id>", or "<label>=<value>,..." for label groups; None when the device lacks a group label."""
    if not spec.group_by:
        return f"device={device}"
    if any(name not in labels for name in spec.group_by):
        return None
    return ",".join(f"{name}={labels[name]}" for name in spec.group_by)
