"""The operator's fleetflow_site_* series (docs/edge.md, Observability) from its looks at a fleet's site links."""

from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from fleetflow.operator.sitelinks import SiteLink, SiteMetrics, connected_of, reconnected, site_links
from fleetflow.runtime import edgelink
from tests.operator.variants import fleet, fleet_doc

FLEET = fleet(fleet_doc(sites=[{"name": "depot-a"}, {"name": "depot-b"}]))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def series(reader: InMemoryMetricReader) -> dict[tuple[str, str], float]:
    """(metric, site) -> value."""
    found: dict[tuple[str, str], float] = {}
    data: Any = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    found[(metric.name, point.attributes["site"])] = point.value
    return found


def leaf(site: str, in_bytes: int, out_bytes: int) -> dict[str, Any]:
    account = edgelink.site_account(edgelink.site_domain(FLEET.name, site))
    return {"account": account, "in_bytes": in_bytes, "out_bytes": out_bytes, "name": f"site-{site}"}


def test_sites_are_found_by_their_hub_account_and_their_bytes_add_up_over_servers() -> None:
    leafs = [leaf("depot-a", 100, 10), leaf("depot-a", 5, 1), {"account": "FLEETFLOW", "in_bytes": 9}]
    links = site_links(FLEET, leafs, {edgelink.site_domain("cold", "depot-a"): 7})
    assert links == [SiteLink("depot-a", True, 105, 11, 7), SiteLink("depot-b", False, 0, 0, 0)]
    assert connected_of(links) == "1/2"


def test_link_up_backlog_its_age_and_bytes_are_exported_per_site_and_forgotten_with_the_fleet() -> None:
    reader, clock = InMemoryMetricReader(), Clock()
    metrics = SiteMetrics(clock, MeterProvider(metric_readers=[reader]))
    metrics.record("ns1", "cold", [SiteLink("depot-a", True, 105, 11, 0), SiteLink("depot-b", False, 0, 0, 0)])
    clock.now += 30  # depot-a falls behind by 4 messages; depot-b stays cut off
    metrics.record("ns1", "cold", [SiteLink("depot-a", True, 300, 40, 4), SiteLink("depot-b", False, 0, 0, 0)])
    found = series(reader)
    assert found[("fleetflow_site_link_up", "depot-a")] == 1 and found[("fleetflow_site_link_up", "depot-b")] == 0
    assert found[("fleetflow_site_backlog_messages", "depot-a")] == 4
    assert found[("fleetflow_site_backlog_age_seconds", "depot-a")] == 30
    assert found[("fleetflow_site_backlog_age_seconds", "depot-b")] == 30, "cut off since the operator first looked"
    assert found[("fleetflow_site_link_received_bytes", "depot-a")] == 300
    assert found[("fleetflow_site_link_sent_bytes", "depot-a")] == 40
    metrics.record("ns1", "cold", None)
    assert not series(reader), "a fleet without sites exports no site series"


def test_a_site_counts_as_reconnected_when_it_was_down_unseen_or_its_link_restarted_from_zero() -> None:
    before = [SiteLink("depot-a", False, 0, 0, 0), SiteLink("depot-b", True, 500, 50, 0)]
    assert reconnected(before, [SiteLink("depot-a", True, 9, 9, 0), SiteLink("depot-b", True, 600, 60, 0)]) == [
        "depot-a"
    ]
    assert reconnected(before, [SiteLink("depot-a", False, 0, 0, 0), SiteLink("depot-b", True, 20, 5, 0)]) == [
        "depot-b"
    ], "fewer bytes than before: a new connection"
    assert reconnected([], [SiteLink("depot-a", True, 1, 1, 0)]) == ["depot-a"], "never seen: re-armed once"
    assert reconnected(before, [SiteLink("depot-a", False, 0, 0, 0), SiteLink("depot-b", False, 0, 0, 0)]) == []
