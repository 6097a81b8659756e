"""The metric names the services export, read from the instruments they create: what dashboards and alerting
rules may query."""

import re

from tests.packaging import chart

SOURCES = (chart.REPO / "services" / "fleetflow", chart.REPO / "operator" / "fleetflow")
INSTRUMENT = re.compile(
    r"create_(counter|up_down_counter|histogram|gauge|observable_gauge|observable_counter)\(\s*\"(fleetflow_\w+)\""
)
# telemetry.SummedCounter(meter, "fleetflow_...", ...): an observable counter made for the hot path.
SUMMED_COUNTER = re.compile(r"SummedCounter\(\s*\w+,\s*\"(fleetflow_\w+)\"")
# telemetry.latency_histogram(meter, "fleetflow_..._seconds", ...): a histogram with the latency buckets.
LATENCY_HISTOGRAM = re.compile(r"latency_histogram\(\s*\w+,\s*\"(fleetflow_\w+)\"")
METRIC = re.compile(r"\bfleetflow_\w+")


def exported_series() -> set[str]:
    """Prometheus series names of every OpenTelemetry instrument the services create.

    The Prometheus exporter adds `_total` to counters and `_bucket`, `_sum`, `_count` to histograms;
    the unit is already part of each name (`..._seconds`)."""
    series: set[str] = set()
    for path in (p for source in SOURCES for p in source.rglob("*.py")):
        text = path.read_text()
        series |= {f"{name}_total" for name in SUMMED_COUNTER.findall(text)}
        for name in LATENCY_HISTOGRAM.findall(text):
            series |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        for kind, name in INSTRUMENT.findall(text):
            if kind == "histogram":
                series |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind in ("counter", "observable_counter"):
                series.add(f"{name}_total")
            else:
                series.add(name)
    return series
