"""The JSON shapes the application API answers with: camelCase, times as epoch milliseconds."""

from typing import Any

from fleetflow.runtime.codec import AlertEvent, WindowAggregate
from fleetflow.writer.stores import StoredReading


def reading(item: StoredReading, keep: frozenset[str] | None) -> dict[str, Any] | None:
    """A reading with only the metrics in `keep` (all when None); None when it has none of them."""
    values = item.metrics if keep is None else {k: v for k, v in item.metrics.items() if k in keep}
    if not values:
        return None
    return {"seq": item.seq, "ts": item.ts, "metrics": values}


def device(item: StoredReading, labels: dict[str, str], online: bool) -> dict[str, Any]:
    """A registry entry: the device, its labels, when it was last heard from, and its latest values."""
    return {
        "device": item.device,
        "labels": labels,
        "online": online,
        "lastSeenMs": item.stored_ms,
        "latest": {"seq": item.seq, "ts": item.ts, "metrics": item.metrics},
    }


def aggregate(item: WindowAggregate) -> dict[str, Any]:
    return {
        "pipeline": item.pipeline,
        "step": item.step,
        "group": item.group,
        "metric": item.metric,
        "windowStartMs": item.window_start_ms,
        "windowEndMs": item.window_end_ms,
        "count": item.count,
        "min": item.min,
        "max": item.max,
        "mean": item.mean,
        "sum": item.sum,
        "last": item.last,
        "percentiles": item.percentiles,
    }


def alert(item: AlertEvent) -> dict[str, Any]:
    return {
        "pipeline": item.pipeline,
        "rule": item.rule,
        "device": item.device,
        "state": item.state,
        "severity": item.severity,
        "tsMs": item.ts_ms,
        "values": item.values,
        "message": item.message,
    }
