"""Which requests the hot route takes ahead of the application's router: only those whose segments are plain ASCII
identifiers, which the router would match to the same segments without decoding, normalising or cutting anything."""

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from fleetflow.runtime.httpserver import HotRoute


async def _answer(request: web.BaseRequest, *segments: str) -> web.Response:
    return web.Response()


ROUTE = HotRoute("POST", "/v1/fleets/{fleet}/devices/{device}/telemetry", _answer)


@pytest.mark.parametrize(
    ("method", "path", "headers", "segments"),
    [
        ("POST", "/v1/fleets/demo/devices/dev-1/telemetry", {}, ("demo", "dev-1")),
        ("POST", "/v1/fleets/demo/devices/Dev_1-x/telemetry", {}, ("demo", "Dev_1-x")),
        ("POST", "/v1/fleets/demo/devices/./telemetry", {}, None),  # anything unusual is left to the router
        ("POST", "/v1/fleets/demo/devices/../telemetry", {}, None),
        ("POST", "/v1/fleets/demo/devices/dev#1/telemetry", {}, None),  # which cuts a fragment off
        ("POST", "/v1/fleets/demo/devices/dev.1/telemetry", {}, None),
        ("POST", "/v1/fleets/demo/devices/dév-1/telemetry", {}, None),
        ("GET", "/v1/fleets/demo/devices/dev-1/telemetry", {}, None),
        ("POST", "/v1/fleets/demo/devices/dev-1/telemetry", {"Expect": "100-continue"}, None),
        ("POST", "/v1/fleets/demo/devices/dev%2D1/telemetry", {}, None),
        ("POST", "/v1/fleets/demo/devices/dev-1/telemetry?x=1", {}, None),
        ("POST", "/v1/fleets/demo/devices/{dev}/telemetry", {}, None),
        ("POST", "/v1/fleets/demo/devices//telemetry", {}, None),
        ("POST", "/v1/fleets/demo/devices/a/b/telemetry", {}, None),
        ("POST", "/v1/fleets/demo/devices/dev-1/telemetry/", {}, None),
        ("POST", "/v1/fleetsXdemo/devices/dev-1/telemetry", {}, None),
    ],
)
def test_takes_only_plain_requests_of_its_route(
    method: str, path: str, headers: dict[str, str], segments: tuple[str, ...] | None
) -> None:
    assert ROUTE.segments(make_mocked_request(method, path, headers=headers)) == segments
