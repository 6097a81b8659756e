"""The operations endpoint every service serves: /healthz, /readyz and /metrics."""

from collections.abc import Callable

import prometheus_client
from aiohttp import web

from fleetflow.runtime import telemetry


def ops_app(ready: Callable[[], tuple[bool, str]]) -> web.Application:
    """`ready()` says whether the service can do its work now, and why not."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ok, reason = ready()
        return web.json_response({"ready": ok, "reason": reason}, status=200 if ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        body = telemetry.prometheus_text()
        return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `app` and return the runner and the port actually bound (port 0 picks a free one)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner, runner.addresses[0][1]
