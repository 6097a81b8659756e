"""docs/observability.md's metrics table names every series a fleetflow instrument exports (read from the code, so
the operator's and the hub's count too, which the end-to-end scrape in tests/e2e/test_prometheus.py cannot see)."""

import re

from tests.packaging import chart
from tests.packaging.instruments import exported_series

DOCS = chart.REPO / "docs" / "observability.md"


def tabled_metrics() -> set[str]:
    """The metric names in the first column of the metrics table."""
    rows = re.findall(r"^\| (`fleetflow_[^|]*)\|", DOCS.read_text(), re.MULTILINE)
    return {name for row in rows for name in re.findall(r"`(fleetflow_\w+)`", row)}


def test_every_exported_series_is_in_the_metrics_table() -> None:
    tabled = tabled_metrics()
    assert "fleetflow_gateway_readings_received_total" in tabled, "the metrics table was not found"
    # A histogram is tabled by its name; Prometheus shows it as _bucket, _sum and _count.
    missing = {re.sub(r"_(bucket|sum|count)$", "", name) for name in exported_series()} - tabled
    assert not missing, f"exported, not in the metrics table of {DOCS.name}: {sorted(missing)}"
