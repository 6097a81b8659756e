"""The hub's edge-site metrics and state, served by the centre's `fleetflow up` on an operations port of its own:
`/metrics` (Prometheus) and `/sites` (JSON, what `fleetflow status` prints).

Why `fleetflow up` and not a service: it is the process that already watches the leaf connections (sitelinks.py),
it alone reaches nats-server's monitoring port (/leafz, where the link and its bytes are), and it logs in as the
admin user that may read every sourcing stream. The services only see their own streams (docs/edge.md)."""

from collections.abc import Callable, Iterable

from aiohttp import web
from nats.aio.client import Client
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider

from fleetflow.local.sitelinks import LeafLink
from fleetflow.local.sitestates import SiteLinkState, SiteStates, source_lags
from fleetflow.runtime import ops, telemetry


class SiteMetrics:
    """Gauges over the latest SiteStates round. Its own MeterProvider, not the global one: several platforms may
    run in one process (tests), each registering and, on close, unregistering its Prometheus collector."""

    def __init__(self, states: SiteStates, streams: list[str]):
        self.states, self.streams = states, streams
        self.reader = PrometheusMetricReader()
        self.provider = MeterProvider(resource=telemetry.resource("fleetflow-up"), metric_readers=[self.reader])
        meter = self.provider.get_meter("fleetflow.sites")
        meter.create_observable_gauge("fleetflow_site_link_up", [self._each(lambda s: int(s.link_up))], unit="1",
                                      description="1 while the site's leaf connection to the hub stands")  # fmt: skip
        meter.create_observable_gauge("fleetflow_site_backlog_messages", [self._each(lambda s: s.backlog_messages)],
                                      unit="1", description="Messages the site holds that the centre has not "
                                      "stored yet, as of the last contact")  # fmt: skip
        meter.create_observable_gauge("fleetflow_site_backlog_age_seconds",
                                      [self._each(lambda s: s.backlog_age_seconds)], unit="s",
                                      description="Time since the centre was last caught up with the site")  # fmt: skip
        meter.create_observable_counter("fleetflow_site_link_received_bytes", [self._each(lambda s: s.received_bytes)],
                                        unit="By", description="Bytes the hub received from the site")  # fmt: skip
        meter.create_observable_counter("fleetflow_site_link_sent_bytes", [self._each(lambda s: s.sent_bytes)],
                                        unit="By", description="Bytes the hub sent to the site")  # fmt: skip

    def _each(self, value: Callable[[SiteLinkState], float]) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value(s), {"fleet": s.fleet, "site": s.site}) for s in self.states.states]

        return observe

    async def observe(self, links: list[LeafLink], nc: Client) -> None:
        """One round (SiteLinks calls it every second)."""
        self.states.observe(links, await source_lags(nc, self.streams))

    def app(self) -> web.Application:
        app = ops.ops_app(lambda: (True, ""))

        async def sites(_: web.Request) -> web.Response:
            return web.json_response({"sites": [state.as_json() for state in self.states.states]})

        app.router.add_get("/sites", sites)
        return app

    def close(self) -> None:
        self.provider.shutdown()  # unregisters the Prometheus collector
