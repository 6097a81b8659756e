"""The benchmark's report: a table for people, JSON for tracking, and the verdict on correctness."""

from typing import Any

from fleetflow.bench.run import DURABILITY, BenchResult

MIB = 1024 * 1024


def summary(result: BenchResult) -> dict[str, Any]:
    load, start, end = result.load, result.start, result.end
    seconds = max(1e-9, load.measure_end - load.measure_start)
    stored_in_window = end.stored - start.stored
    per_k = max(1.0, stored_in_window) / 1000
    accounted = result.stored_total + result.removed  # a reading a step removed is not stored, by design
    duplicated = max(0, accounted - load.acknowledged)
    lost = max(0, load.acknowledged - accounted)
    return {
        "options": {
            "devices": result.options.devices,
            "batch": result.options.batch,
            "protocol": result.options.protocol,
            "duration_s": result.options.duration,
            "warmup_s": result.options.warmup,
            "rate": result.options.rate or "max",
            "processors": result.options.processors,
            "store": "cassandra" if result.options.cassandra else "sqlite",
            "pipeline": " ".join(map(str, result.options.pipeline_paths)) or "no steps",
            "durability": result.options.durability,
        },
        "durability": DURABILITY[result.options.durability],
        "cores": result.cores,
        "load_average": [round(x, 2) for x in result.load_average],
        "throughput": {
            "accepted_readings_per_s": round(load.measured_acknowledged / seconds),
            "stored_readings_per_s": round(stored_in_window / seconds),
            "transport_publish_readings_per_s": round(result.baseline.published_per_second * result.options.batch),
            "transport_consume_readings_per_s": round(result.baseline.consumed_per_second * result.options.batch),
            "transport_publish_msgs_per_s": round(result.baseline.published_per_second),
            "transport_consume_msgs_per_s": round(result.baseline.consumed_per_second),
        },
        "latency_ms": {
            "gateway_response": {k: round(v, 1) for k, v in load.response_percentiles().items()},
            "device_to_stored": {k: round(v, 1) for k, v in result.store_latencies_ms.items()},
        },
        "cost": {
            name: {
                "cpu_s_per_1k_readings": round((end.cpu[name].cpu_seconds - start.cpu[name].cpu_seconds) / per_k, 4),
                "peak_rss_mib": round(result.peak_rss.get(name, 0) / MIB, 1),
            }
            for name in sorted(end.cpu)
            if name in start.cpu
        },
        "end_state": {
            "consumer_lag_at_end": result.lag_at_end,
            "acknowledged": load.acknowledged,
            "stored": result.stored_total,
            "removed_by_steps": result.removed,
            "rejected": load.rejected,
            "duplicated": duplicated,
            "lost": lost,
            "retried_batches_answered_duplicate": load.duplicate_answers,
        },
    }


def healthy(report: dict[str, Any]) -> bool:
    state = report["end_state"]
    return bool(state["rejected"] == 0 and state["duplicated"] == 0 and state["lost"] == 0)


def table(report: dict[str, Any]) -> str:
    o, t, lat, state = report["options"], report["throughput"], report["latency_ms"], report["end_state"]
    lines = [
        f"fleetflow bench: {o['devices']} devices x {o['batch']} readings/request over {o['protocol']}, "
        f"rate {o['rate']}, {o['duration_s']:g} s measured after {o['warmup_s']:g} s warm-up, "
        f"{o['processors']} processor(s), {o['store']}, {report['cores']} cores, "
        f"load average {' '.join(map(str, report['load_average']))}",
        f"pipeline: {o['pipeline']}; durability {o['durability']}: {report['durability']}",
        "",
        "throughput (readings/s)            fleetflow     raw JetStream, same bytes",
        f"  accepted by the gateway       {t['accepted_readings_per_s']:>12,}     "
        f"publish {t['transport_publish_readings_per_s']:>12,}  ({t['transport_publish_msgs_per_s']:,} msgs/s)",
        f"  stored end to end             {t['stored_readings_per_s']:>12,}     "
        f"consume {t['transport_consume_readings_per_s']:>12,}  ({t['transport_consume_msgs_per_s']:,} msgs/s)",
        "",
        "latency (ms)                         p50       p95       p99",
    ]
    for label, key in (("gateway response", "gateway_response"), ("device -> stored row", "device_to_stored")):
        values = lat[key]
        cells = "".join(f"{values[p]:>10,.1f}" for p in ("p50", "p95", "p99")) if values else "   (not measured)"
        lines.append(f"  {label:<30}{cells}")
    lines += ["", "cost                        CPU s / 1k readings   peak RSS (MiB)"]
    for name, cost in report["cost"].items():
        lines.append(f"  {name:<30}{cost['cpu_s_per_1k_readings']:>14.4f}{cost['peak_rss_mib']:>17.1f}")
    lines += [
        "",
        f"end state: consumer lag when the load stopped {state['consumer_lag_at_end']:,} messages; "
        f"acknowledged {state['acknowledged']:,}, stored {state['stored']:,}, "
        f"removed by the pipeline's steps {state['removed_by_steps']:,}",
        f"  rejected {state['rejected']:,}  duplicated {state['duplicated']:,}  lost {state['lost']:,}  "
        f"-> {'OK' if healthy(report) else 'FAILED'}",
    ]
    return "\n".join(lines)
