"""The gateway's HTTP ingest against a real nats-server: acks after JetStream, and every bad input refused."""

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
import yarl

from fleetflow.api import DeviceFleet
from fleetflow.gateway.main import serve
from fleetflow.runtime import credentials, subjects
from fleetflow.runtime.settings import GatewaySettings
from tests.support.natsserver import NatsServer

NOW_MS = 1_763_900_000_000


@dataclass
class Gateway:
    url: str
    secret: bytes
    nats_url: str

    def token(self, device: str) -> str:
        return credentials.device_token(self.secret, "demo", device)

    async def post(self, device: str, body: Any, token: str | None = "auto", fleet: str = "demo",
                   raw: bytes | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:  # fmt: skip
        headers = {"Content-Type": "application/json"}
        if token == "auto":
            token = self.token(device)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else json.dumps(body).encode()
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{self.url}/v1/fleets/{fleet}/devices/{device}/telemetry", data=data, headers=headers
            ) as response,
        ):
            return response.status, await response.json(), dict(response.headers)

    async def stored_messages(self) -> int:
        nc = await nats.connect(self.nats_url)
        try:
            return (await nc.jetstream().stream_info(subjects.telemetry_stream("demo"))).state.messages
        finally:
            await nc.close()


def readings(*seqs: int, **metrics: float) -> dict[str, Any]:
    return {"readings": [{"seq": s, "ts": NOW_MS + s, "metrics": metrics or {"temp": 21.5}} for s in seqs]}


@pytest.fixture
async def gateway(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Gateway]:
    secret = credentials.ensure_local_secret(tmp_path, "demo")
    fleet = DeviceFleet.model_validate(
        {"metadata": {"name": "demo"},
         "spec": {"gateway": {"maxBatchReadings": 5, "maxBodyBytes": 2048,
                              "rateLimit": {"readingsPerSecond": 1, "burst": 20}},
                  "devices": {"idPattern": "^dev-"}}}
    )  # fmt: skip
    status = tmp_path / "status.json"
    settings = GatewaySettings(
        fleet=fleet, nats_url=nats_server.url, secret_file=credentials.local_secret_path(tmp_path, "demo"),
        listen_port=0, ops_port=0, status_file=status,
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    async with asyncio.timeout(15):
        while not status.exists():
            await asyncio.sleep(0.02)
    port = json.loads(status.read_text())["http_port"]
    yield Gateway(f"http://127.0.0.1:{port}", secret, nats_server.url)
    stop.set()
    await asyncio.wait_for(task, 15)


async def test_accepts_a_batch_only_after_jetstream_has_it(gateway: Gateway) -> None:
    status, body, _ = await gateway.post("dev-1", readings(1, 2, 3))
    assert (status, body) == (202, {"accepted": 3, "duplicate": False, "firstSeq": 1, "lastSeq": 3})
    assert await gateway.stored_messages() == 1  # one message per batch, not per reading


async def test_a_retried_batch_is_recognised_and_stored_once(gateway: Gateway) -> None:
    await gateway.post("dev-1", readings(1, 2))
    status, body, _ = await gateway.post("dev-1", readings(1, 2))
    assert status == 202 and body["duplicate"] is True
    assert await gateway.stored_messages() == 1


async def test_rfc3339_timestamps_are_accepted(gateway: Gateway) -> None:
    body = {"readings": [{"seq": 1, "ts": "2026-11-23T10:00:00.123Z", "metrics": {"t": 1}}]}
    assert (await gateway.post("dev-1", body))[0] == 202


BAD_INPUTS = [
    ("malformed JSON", dict(raw=b'{"readings": [}'), 400, "malformed_json", "body is not valid JSON"),
    ("wrong type", dict(body={"readings": [{"seq": "one", "ts": NOW_MS, "metrics": {"t": 1}}]}), 400,
     "invalid_reading", "Expected `int`, got `str` - at `$.readings[0].seq`"),
    ("missing field", dict(body={"readings": [{"seq": 1, "metrics": {"t": 1}}]}), 400, "invalid_reading",
     "missing required field `ts`"),
    ("unknown field", dict(body={"readings": [{"seq": 1, "ts": NOW_MS, "metrics": {"t": 1}, "x": 1}]}), 400,
     "invalid_reading", "unknown field `x`"),
    ("non-finite number", dict(raw=b'{"readings": [{"seq": 1, "ts": 1763900000000, "metrics": {"t": 1e999}}]}'),
     400, "non_finite_number", "Number out of range - at `$.readings[0].metrics[...]`; metric values must be finite"),
    ("bad timestamp", dict(body={"readings": [{"seq": 1, "ts": 1763900000, "metrics": {"t": 1}}]}), 400,
     "invalid_timestamp", "Expected `int` >= 946684800000 - at `$.readings[0].ts`; send epoch milliseconds between 2000-01-01 and 2100-01-01"),
    ("timestamp without offset", dict(body={"readings": [{"seq": 1, "ts": "2026-11-23T10:00:00", "metrics": {"t": 1}}]}),
     400, "invalid_timestamp", "is not an RFC 3339 date-time with an offset"),
    ("ISO 8601 but not RFC 3339", dict(body={"readings": [{"seq": 1, "ts": "20261123T100000Z", "metrics": {"t": 1}}]}),
     400, "invalid_timestamp", "'20261123T100000Z' is not an RFC 3339 date-time"),
    ("seq beyond 2^63 - 1", dict(body=readings(2**63)), 400, "invalid_reading",
     "seq must be an integer from 0 to 9223372036854775807"),
    ("seq of 2^64", dict(body=readings(2**64)), 400, "invalid_reading", "seq must be an integer from 0"),
    ("duplicate metric", dict(raw=b'{"readings": [{"seq": 1, "ts": 1763900000000, "metrics": {"t": 1, "t": 2}}]}'),
     400, "duplicate_key", "key 't' appears twice"),
    ("metric name with a newline", dict(body=readings(1, **{"temp\n": 1.0})), 400, "invalid_metric_name", "'temp\\n'"),
    ("bad metric name", dict(body=readings(1, **{"temp.c": 1.0})), 400, "invalid_metric_name", "'temp.c'"),
    ("seq not increasing", dict(body=readings(2, 1)), 400, "seq_not_increasing", "seq 1 follows seq 2"),
    ("negative seq", dict(body=readings(-1)), 400, "invalid_reading", "Expected `int` >= 0 - at `$.readings[0].seq`; seq must be an integer from 0 to"),
    ("no metrics", dict(body={"readings": [{"seq": 1, "ts": NOW_MS, "metrics": {}}]}), 400, "invalid_reading",
     "Expected `object` of length >= 1 - at `$.readings[0].metrics`; send at least one metric"),
    ("bad RFC 3339", dict(body={"readings": [{"seq": 1, "ts": "yesterday", "metrics": {"t": 1}}]}), 400,
     "invalid_timestamp", "readings[0].ts 'yesterday' is not an RFC 3339 date-time"),
    ("empty batch", dict(body={"readings": []}), 400, "empty_batch", "readings is empty"),
    ("batch too large", dict(body=readings(1, 2, 3, 4, 5, 6)), 413, "batch_too_large",
     "6 readings in one request; at most 5 accepted"),
    ("body too large", dict(raw=b" " * 4096 + b"{}"), 413, "body_too_large", "exceeds 2048 bytes"),
    ("missing token", dict(body=readings(1), token=None), 401, "missing_token", "no Authorization header"),
    ("bad token", dict(body=readings(1), token="nope"), 401, "invalid_token", "not valid for device 'dev-1'"),
    ("unknown fleet", dict(body=readings(1), fleet="other"), 404, "unknown_fleet", "fleet 'other' is not served"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "request_args", "status", "reason", "detail"), BAD_INPUTS,
                         ids=[case[0] for case in BAD_INPUTS])  # fmt: skip
async def test_bad_input_is_refused_with_a_reason_and_stores_nothing(
    gateway: Gateway, case: str, request_args: dict[str, Any], status: int, reason: str, detail: str
) -> None:
    args = {"body": None, **request_args}
    got_status, body, _ = await gateway.post("dev-1", args.pop("body"), **args)
    assert got_status == status, body
    assert body["error"] == reason
    assert detail in body["detail"]
    assert await gateway.stored_messages() == 0
    # the gateway keeps serving
    assert (await gateway.post("dev-2", readings(1)))[0] == 202


async def test_another_devices_token_is_refused(gateway: Gateway) -> None:
    status, body, _ = await gateway.post("dev-1", readings(1), token=gateway.token("dev-2"))
    assert (status, body["error"]) == (401, "invalid_token")
    assert await gateway.stored_messages() == 0


@pytest.mark.parametrize(("device", "detail"), [("dev.1", "device id 'dev.1' is not valid"),
                                                ("dev-1%0A", "device id 'dev-1\\n' is not valid"),
                                                ("meter-1", "does not match fleet demo's idPattern '^dev-'")])  # fmt: skip
async def test_invalid_device_ids_are_refused(gateway: Gateway, device: str, detail: str) -> None:
    status, body, _ = await gateway.post(device, readings(1), token="x")
    assert (status, body["error"]) == (400, "invalid_device_id")
    assert detail in body["detail"]


async def test_rate_limit_answers_429_with_retry_after(gateway: Gateway) -> None:
    for first in range(1, 20, 5):
        assert (await gateway.post("dev-9", readings(*range(first, first + 5))))[0] == 202
    status, body, headers = await gateway.post("dev-9", readings(21, 22, 23, 24, 25))
    assert (status, body["error"]) == (429, "rate_limited")
    assert int(headers["Retry-After"]) >= 1
    assert await gateway.stored_messages() == 4


async def _raw_exchange(url: str, request: bytes) -> tuple[int, dict[str, Any]]:
    """Send `request` as raw bytes (what no HTTP client library would send) and read the answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        (b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, "not_found"),
        (b"GET /v1/fleets/demo/devices/dev-1/telemetry HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405,
         "method_not_allowed"),
        (b"POST /v1/fleets/demo/devices/dev-1/telemetry HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400,
         "bad_request"),
        (b"POST /v1/fleets/demo/devices/dev-1/telemetry HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
         400, "bad_request"),
    ],
    ids=["unknown path", "wrong method", "unparsable header", "header too long"],
)  # fmt: skip
async def test_refusals_of_the_router_and_the_parser_are_json(
    gateway: Gateway, request_bytes: bytes, status: int, reason: str
) -> None:
    got_status, body = await _raw_exchange(gateway.url, request_bytes)
    assert (got_status, body["error"]) == (status, reason)
    assert body["detail"]
    assert (await gateway.post("dev-2", readings(1)))[0] == 202


async def test_an_authorization_header_that_is_not_utf8_is_an_invalid_token(gateway: Gateway) -> None:
    body = json.dumps(readings(1)).encode()
    request = (b"POST /v1/fleets/demo/devices/dev-1/telemetry HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               b"Authorization: Bearer \xff\xfe\r\nContent-Type: application/json\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
    assert (await _raw_exchange(gateway.url, request))[1]["error"] == "invalid_token"


async def test_a_body_that_does_not_decompress_is_refused(gateway: Gateway) -> None:
    headers = {"Authorization": f"Bearer {gateway.token('dev-1')}", "Content-Type": "application/json",
               "Content-Encoding": "gzip"}  # fmt: skip
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gateway.url}/v1/fleets/demo/devices/dev-1/telemetry", data=b"not gzip", headers=headers) as r,
    ):
        assert (r.status, (await r.json())["error"]) == (400, "malformed_body")
    assert await gateway.stored_messages() == 0


async def test_a_client_that_never_finishes_its_headers_is_disconnected(gateway: Gateway) -> None:
    from fleetflow.runtime import httpserver

    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/fleets/demo/devices/dev-1/telemetry HTTP/1.1\r\nHost: x\r\n")  # and nothing more
    await writer.drain()
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(reader.read(), httpserver.HEADER_TIMEOUT_S + 10) == b""  # closed by the server
    assert asyncio.get_running_loop().time() - started < httpserver.HEADER_TIMEOUT_S + 5
    writer.close()


async def test_a_body_that_arrives_too_slowly_is_refused_and_one_that_arrived_is_not_held(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleetflow.runtime import httpserver

    monkeypatch.setattr(httpserver, "BODY_TIMEOUT_S", 0.5)
    body = json.dumps(readings(1)).encode()
    head = (b"POST /v1/fleets/demo/devices/dev-1/telemetry HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: Bearer " + gateway.token("dev-1").encode() + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")  # fmt: skip
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + body[:10])  # and the rest never comes
        async with asyncio.timeout(10):  # the answer, not the close: aiohttp lingers for the unread body a while
            status_line, _, _ = (await reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
            answer = json.loads(await reader.readuntil(b"}"))
    finally:
        writer.close()
    assert (int(status_line.split()[1]), answer["error"]) == (408, "request_timeout")
    assert answer["detail"] == "the request body did not arrive within 0.5 s"
    assert (await _raw_exchange(gateway.url, head + body))[0] == 202
    assert await gateway.stored_messages() == 1


@pytest.mark.parametrize("sent", [f"00-{'4bf92f3577b34da6a3ce929d0e0e4736'}-00f067aa0ba902b7-00", None],
                         ids=["device's unsampled trace", "no trace context"])  # fmt: skip
async def test_the_stored_batch_carries_the_requests_trace_context(gateway: Gateway, sent: str | None) -> None:
    """Nothing is sampled here (no exporter): the request's trace still reaches the processor through the message."""
    headers = {"Authorization": f"Bearer {gateway.token('dev-1')}", "Content-Type": "application/json"}
    if sent is not None:
        headers["traceparent"] = sent
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gateway.url}/v1/fleets/demo/devices/dev-1/telemetry", json=readings(1), headers=headers) as r,
    ):
        assert r.status == 202
    nc = await nats.connect(gateway.nats_url)
    try:
        stored = await nc.jetstream().get_msg(subjects.telemetry_stream("demo"), 1)
    finally:
        await nc.close()
    assert stored.headers is not None
    version, trace_id, span_id, flags = stored.headers["traceparent"].split("-")
    assert (version, len(trace_id), len(span_id)) == ("00", 32, 16)
    assert not int(flags, 16) & 1, "not sampled"
    assert int(trace_id, 16) and int(span_id, 16)
    if sent is not None:
        assert trace_id == sent.split("-")[1] and span_id != sent.split("-")[2]  # the gateway's span, same trace


@pytest.mark.parametrize(
    ("path", "expect100", "status"),
    [
        ("/v1/fleets/demo/devices/dev-1/telemetry", False, 202),
        ("/v1/fleets/demo/devices/dev%2D1/telemetry", False, 202),  # the router decodes it; the hot route leaves it
        ("/v1/fleets/demo/devices/dev-1/telemetry?source=probe", False, 202),
        ("/v1/fleets/demo/devices/dev-1/telemetry", True, 202),  # Expect: 100-continue, answered by the router
        ("/v1/fleets/demo/devices/dev-1/telemetry/", False, 404),
        ("/v1/fleets/demo/devices/dev-1/telemetry/extra", False, 404),
        ("/v1/fleets/demo/devices//telemetry", False, 404),
        ("//v1/fleets/demo/devices/dev-1/telemetry", False, 404),
    ],
    ids=["plain", "percent-encoded", "query", "expect 100-continue", "trailing slash", "longer", "empty device",
         "double slash"],
)  # fmt: skip
async def test_the_telemetry_route_answers_as_the_router_does(
    gateway: Gateway, path: str, expect100: bool, status: int
) -> None:
    """The telemetry route is served ahead of the application's router (httpserver.HotRoute); what it does not take
    plainly goes through the router, and either way the device gets the router's answer."""
    headers = {"Authorization": f"Bearer {gateway.token('dev-1')}", "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            yarl.URL(gateway.url + path, encoded=True),
            data=json.dumps(readings(1)).encode(),
            headers=headers,
            expect100=expect100,
        ) as response,  # fmt: skip
    ):
        answer = await response.json()
    assert response.status == status, answer
    if status == 202:
        assert answer == {"accepted": 1, "duplicate": False, "firstSeq": 1, "lastSeq": 1}
    else:
        assert answer["error"] == "not_found"
    assert await gateway.stored_messages() == (1 if status == 202 else 0)


async def test_a_crash_in_the_telemetry_route_is_a_json_500_and_the_gateway_serves_on(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleetflow.gateway.ingest import BatchValidator

    def crash(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(BatchValidator, "validate", crash)
    status, body, _ = await gateway.post("dev-1", readings(1))
    assert (status, body) == (500, {"error": "internal", "detail": "the server failed to handle this request; it "
                                    "was logged"})  # fmt: skip
    monkeypatch.undo()
    assert (await gateway.post("dev-1", readings(1)))[0] == 202


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [("/v1/fleets/demo/devices/./telemetry", 400, "invalid_device_id"),
     ("/v1/fleets/demo/devices/dev-1#x/telemetry", 404, "not_found")],  # the router's URL cuts the fragment off
)  # fmt: skip
async def test_unusual_segments_get_the_routers_answer(gateway: Gateway, path: str, status: int, reason: str) -> None:
    """Segments the hot route does not take plainly (httpserver.HotRoute) are answered as the router answers them."""
    body = json.dumps(readings(1)).encode()
    request = (f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
               f"Authorization: Bearer {gateway.token('dev-1')}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip
    got_status, answer = await _raw_exchange(gateway.url, request)
    assert (got_status, answer["error"]) == (status, reason)
    assert await gateway.stored_messages() == 0
