"""Observability on the local platform: one trace from device request to stored row, every metric the
dashboards query really exported, and JSON logs with trace ids and without device tokens."""

import asyncio
import json
import re
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fleetflow.runtime import credentials
from tests.e2e.localplatform import RunningPlatform, fleetflow_up
from tests.support.certificates import new_authority
from tests.support.otlp import ReceivedSpan, TraceReceiver, otlp_receiver
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
COLD_CHAIN = ROOT / "examples" / "cold-chain"
DOCS = ROOT / "docs" / "observability.md"
# The operator's dashboard is held to the operator's metrics in tests/operator; these run locally.
# Fed by the operator, the NATS exporter sidecar of a managed NATS and a hub with edge sites: not by `fleetflow up`.
NOT_LOCAL = {"operator.json", "nats.json", "edge-sites.json"}
DASHBOARDS = sorted(p for p in (ROOT / "charts" / "fleetflow" / "dashboards").glob("*.json") if p.name not in NOT_LOCAL)
SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # OTLP span kinds
pytestmark = pytest.mark.e2e

# Export quickly so the test waits on data, not on the SDK's default 5 s / 60 s intervals.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "1000"}


async def post(url: str, token: str, readings: list[dict[str, Any]], ca: Path | None = None) -> int:
    trust = ssl.create_default_context(cafile=ca) if ca else True
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"readings": readings}, headers=headers, ssl=trust) as response,
    ):
        return response.status


def send_traffic(platform: RunningPlatform, ca: Path | None = None) -> str:
    """A batch, its retry, a reading the filter drops, and a request with a wrong token; returns the token.
    `ca`: the CA that signed the gateway's certificate, when it serves HTTPS."""
    secret = credentials.read_secret(Path(platform.endpoints["fleets"]["coldchain"]["secretFile"]))
    token = credentials.device_token(secret, "coldchain", "box-a1")
    url = f"{platform.gateway('coldchain')}/v1/fleets/coldchain/devices/box-a1/telemetry"
    now = int(time.time() * 1000)
    batch = [{"seq": s, "ts": now + s, "metrics": {"temp_c": 5.0, "battery_v": 3.9, "battery_a": 0.5}} for s in (1, 2)]
    dropped = [{"seq": 3, "ts": now + 3, "metrics": {"temp_c": -127.0, "battery_v": 3.9, "battery_a": 0.5}}]
    statuses = [asyncio.run(post(url, token, batch, ca)), asyncio.run(post(url, token, batch, ca)),
                asyncio.run(post(url, token, dropped, ca)), asyncio.run(post(url, token[::-1], batch, ca))]  # fmt: skip
    assert statuses == [202, 202, 202, 401]
    return token


def request_trace(receiver: TraceReceiver) -> list[ReceivedSpan]:
    """All spans of the trace that started with the first accepted request, once it reached the store."""
    spans = receiver.snapshot()
    servers = [s for s in spans if s.kind == SERVER and s.attributes.get("http.response.status_code") == 202]
    if not servers:
        return []
    trace = [s for s in spans if s.trace_id == servers[0].trace_id]
    # Each service exports on its own schedule: the writer's spans can arrive before the processor's.
    ids = {s.span_id for s in trace}
    whole = all(s.parent_span_id in ids for s in trace if s.kind != SERVER)
    stored = any(s.name == "upsert readings" for s in trace)
    processed = any(s.service == "fleetflow-processor" for s in trace)
    return trace if whole and stored and processed else []


def test_one_trace_runs_from_the_device_request_to_the_stored_row(tmp_path: Path) -> None:
    with (
        otlp_receiver() as (endpoint, receiver),
        fleetflow_up(tmp_path, COLD_CHAIN, extra=("--otlp-endpoint", endpoint), env=FAST_EXPORT) as platform,
    ):
        send_traffic(platform)
        trace = wait_for(
            lambda: request_trace(receiver), "a whole trace from gateway to store (every span's parent exported)"
        )
        platform.stop()
    by_service: dict[str, list[ReceivedSpan]] = {}
    for span in trace:
        by_service.setdefault(span.service, []).append(span)
    assert {"fleetflow-gateway", "fleetflow-processor", "fleetflow-writer"} <= set(by_service)
    kinds = {(s.service, s.kind) for s in trace}
    assert {("fleetflow-gateway", SERVER), ("fleetflow-gateway", PRODUCER), ("fleetflow-processor", CONSUMER),
            ("fleetflow-writer", CONSUMER), ("fleetflow-writer", CLIENT)} <= kinds  # fmt: skip
    publish = next(s for s in trace if s.kind == PRODUCER and s.service == "fleetflow-gateway")
    assert publish.attributes["messaging.system"] == "nats"
    assert publish.attributes["messaging.destination.name"] == "ff.coldchain.tm.box-a1"
    upsert = next(s for s in trace if s.name == "upsert readings")
    assert upsert.attributes["db.system.name"] == "sqlite"
    assert trace[0].trace_id in upsert.links  # the batched write links to every message it combined


def dashboard_metrics() -> set[str]:
    """What the local dashboards query."""
    names = set()
    for path in DASHBOARDS:
        for target in re.findall(r'"expr":\s*"((?:[^"\\]|\\.)*)"', path.read_text()):
            names.update(re.findall(r"\bfleetflow_[a-z0-9_]+", target))
    return names


async def scrape_all(platform: RunningPlatform) -> tuple[set[str], str]:
    names: set[str] = set()
    text = ""
    async with aiohttp.ClientSession() as session:
        for service in platform.endpoints["services"].values():
            async with session.get(service["metrics"]) as response:
                body = await response.text()
            text += body
            names.update(re.findall(r"^(fleetflow_[a-z0-9_]+)", body, re.MULTILINE))
            repeated = [series for series, n in Counter(series_of(body)).items() if n > 1]
            assert not repeated, f"{service['metrics']} exports a series more than once: {repeated[:3]}"
    return names, text


def series_of(body: str) -> list[str]:
    """Each sample's name and labels (a histogram's bucket with its `le`) in a /metrics body."""
    return [line.rpartition(" ")[0] for line in body.splitlines() if line and not line.startswith("#")]


def test_every_metric_the_dashboards_query_is_exported_and_logs_are_clean(tmp_path: Path) -> None:
    """With the gateway serving HTTPS (`--gateway-tls`), so that its certificate's expiry is exported too."""
    wanted = dashboard_metrics()
    assert "fleetflow_tls_certificate_expiry_timestamp_seconds" in wanted
    tls = new_authority().tls_secret_files(tmp_path / "tls", [])
    gateway_tls = ("--gateway-tls", str(tls / "tls.crt"), str(tls / "tls.key"))
    with fleetflow_up(tmp_path, COLD_CHAIN, extra=gateway_tls) as platform:
        token = send_traffic(platform, tls / "ca.crt")
        missing: set[str] = set()

        def all_exported() -> bool:
            missing.clear()
            missing.update(wanted - asyncio.run(scrape_all(platform))[0])
            return not missing

        deadline = time.monotonic() + 30
        while not all_exported() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not missing, f"queried by a dashboard but not exported: {sorted(missing)}"
        platform.stop()
    lines = [line for log in (tmp_path / "logs").glob("*.log") if log.name != "nats-server.log"
             for line in log.read_text().splitlines()]  # fmt: skip
    records = [json.loads(line) for line in lines]  # every line is JSON
    assert any(r.get("event") == "telemetry refused" and len(r.get("trace_id", "")) == 32 for r in records)
    assert all(token not in line and token[::-1] not in line for line in lines), "a device token was logged"


# What each protocol's gateway span carries (OpenTelemetry semantic conventions), beyond fleetflow.protocol and
# fleetflow.device. MQTT devices talk to nats-server's MQTT listener, not to the gateway: its span consumes their
# messages from JetStream and knows no connection.
CONVENTIONS: dict[str, dict[str, object]] = {
    "http": {"network.transport": "tcp", "network.protocol.name": "http", "url.scheme": "http",
             "http.request.method": "POST", "http.response.status_code": 202},
    "grpc": {"network.transport": "tcp", "network.protocol.name": "http", "network.protocol.version": "2",
             "rpc.system": "grpc", "rpc.service": "fleetflow.device.v1.DeviceGateway", "rpc.method": "Connect"},
    "ws": {"network.transport": "tcp", "network.protocol.name": "websocket"},
    "coap": {"network.transport": "udp", "network.protocol.name": "coap"},
    "mqtt": {"network.protocol.name": "mqtt", "messaging.system": "nats", "messaging.operation.type": "receive"},
}  # fmt: skip


def assert_semantic_conventions(protocol: str, span: ReceivedSpan, endpoint: str) -> None:
    """`span` carries its protocol's attributes, and the connection's ends: the gateway's `endpoint`, where the
    device dialled it, and the device's own address and port."""
    found = span.attributes
    assert found["fleetflow.protocol"] == protocol and str(found["fleetflow.device"]), found
    for key, value in CONVENTIONS[protocol].items():
        assert found.get(key) == value, f"{protocol}: {key} is {found.get(key)!r}, not {value!r}"
    if protocol == "mqtt":
        assert not {"server.address", "client.address"} & set(found), f"mqtt: no connection to describe: {found}"
        return
    dialled = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    assert (found["server.address"], found["server.port"]) == (dialled.hostname, dialled.port), (protocol, found)
    assert found["client.address"] == "127.0.0.1", (protocol, found)
    assert isinstance(found["client.port"], int) and found["client.port"] not in (0, dialled.port), (protocol, found)


KINDS = {"SERVER": SERVER, "CLIENT": CLIENT, "PRODUCER": PRODUCER, "CONSUMER": CONSUMER}
SPAN_ROW = re.compile(r"^(?:gateway|processor|writer|any)?[ ]+(\S.*?)[ ]{2,}(SERVER|CLIENT|PRODUCER|CONSUMER)\b", re.M)


def documented_spans() -> list[tuple[int, re.Pattern[str]]]:
    """(kind, name pattern) of each span in the table of docs/observability.md's Traces section, where `<x>` stands
    for a name's variable part and `A | B` for alternatives (`upsert readings | aggregates`: upsert aggregates)."""
    table = DOCS.read_text().split("## Traces", 1)[1].split("```", 2)[1]
    found = []
    for names, kind in SPAN_ROW.findall(table):
        first, *others = names.split(" | ")
        verb = first.split(" ")[0]
        for name in (first, *(other if " " in other else f"{verb} {other}" for other in others)):
            found.append((KINDS[kind], re.compile(".+?".join(map(re.escape, re.split(r"<\w+>", name))))))
    return found


def assert_the_docs_name_every_span(spans: list[ReceivedSpan]) -> None:
    """docs/observability.md's table of spans has every span the services sent, by name and kind."""
    documented = documented_spans()
    assert len(documented) >= 10, documented
    undocumented = {(s.service, s.name, s.kind) for s in spans
                    if not any(kind == s.kind and name.fullmatch(s.name) for kind, name in documented)}  # fmt: skip
    assert not undocumented, f"spans not in {DOCS.name}'s table: {sorted(undocumented)}"


def assert_the_docs_name_every_span_attribute(spans: list[ReceivedSpan]) -> None:
    """docs/observability.md names every attribute of every span the services sent (in its table of spans or in
    the text)."""
    docs = DOCS.read_text()
    undocumented: dict[str, set[str]] = {}
    for span in spans:
        for key in span.attributes:
            if not re.search(rf"(?<![\w.]){re.escape(key)}(?![\w.])", docs):
                undocumented.setdefault(key, set()).add(f"{span.service}: {span.name}")
    assert not undocumented, f"span attributes not in {DOCS.name}: {undocumented}"


POISON_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
STORED = "upsert readings"


def reaches_the_store(spans: list[ReceivedSpan], root: ReceivedSpan) -> bool:
    """The root's trace continues to a store write, or a store write links to it (one write, many traces)."""
    return any(s.name == STORED and (s.trace_id == root.trace_id or root.trace_id in s.links) for s in spans)


PROTOCOLS = ("http", "grpc", "mqtt", "ws", "coap")


def protocol_roots(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    """The first gateway span of each protocol whose trace reached the store."""
    kinds = {
        "http": lambda s: s.kind == SERVER and s.name.startswith("POST "),
        "grpc": lambda s: s.kind == SERVER and s.name == "fleetflow.device.v1.DeviceGateway/Connect",
        "mqtt": lambda s: s.kind == CONSUMER and s.name == "receive mqtt telemetry",
        "ws": lambda s: s.kind == SERVER and s.name == "WS telemetry",
        "coap": lambda s: s.kind == SERVER and s.name == "CoAP POST telemetry",
    }
    found = {}
    for protocol, is_root in kinds.items():
        roots = [s for s in spans if s.service == "fleetflow-gateway" and is_root(s) and reaches_the_store(spans, s)]
        if roots:
            found[protocol] = roots[0]
    return found


async def publish_poison(platform: RunningPlatform) -> None:
    """A message on the telemetry stream that is no telemetry batch, sent inside a known trace."""
    nc = await platform.connect_nats()
    try:
        headers = {"traceparent": f"00-{POISON_TRACE}-00f067aa0ba902b7-01", "Nats-Msg-Id": "poison-1"}
        await nc.jetstream().publish("ff.coldchain.tm.box-z9", b"not a batch", headers=headers)
    finally:
        await nc.close()


async def dead_letter_headers(platform: RunningPlatform) -> dict[str, str]:
    nc = await platform.connect_nats()
    try:
        msg = await nc.jetstream().get_last_msg("ff-coldchain-deadletter", "ff.coldchain.dlq.>")
        return dict(msg.headers or {})
    finally:
        await nc.close()


def test_each_protocol_has_one_trace_to_the_store_and_a_dead_letter_ends_its_trace_in_an_error(
    tmp_path: Path,
) -> None:
    with (
        otlp_receiver() as (endpoint, receiver),
        fleetflow_up(tmp_path, COLD_CHAIN, extra=("--otlp-endpoint", endpoint), env=FAST_EXPORT) as platform,
    ):
        devices = [
            subprocess.Popen([sys.executable, "-m", "fleetflow.cli", "simulate", "--fleet", "coldchain", "--protocol",
                              protocol, "--devices", "2", "--batch", "3", "--interval", "0.3", "--duration", "2",
                              "--data-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for protocol in PROTOCOLS[1:]
        ]  # fmt: skip
        send_traffic(platform)
        asyncio.run(publish_poison(platform))
        for device in devices:
            output, _ = device.communicate(timeout=60)
            assert device.returncode == 0, output
        roots = wait_for(lambda: (r := protocol_roots(receiver.snapshot())) and len(r) == 5 and r, "5 protocols stored")
        dead = wait_for(
            lambda: [s for s in receiver.snapshot() if s.trace_id == POISON_TRACE and s.name.startswith("dead-letter")],
            "the dead-letter span",
        )
        headers = asyncio.run(dead_letter_headers(platform))
        endpoints = platform.endpoints["fleets"]["coldchain"]
        platform.stop()
    assert_the_docs_name_every_span(receiver.snapshot())
    assert_the_docs_name_every_span_attribute(receiver.snapshot())
    assert set(PROTOCOLS) == set(roots)
    for protocol, root in roots.items():
        assert_semantic_conventions(protocol, root, endpoints[protocol])
    (span,) = dead
    assert span.status[0] == 2 and "not a telemetry batch" in span.status[1], span.status
    assert "not a telemetry batch" in str(span.attributes["fleetflow.dead_letter.reason"])
    assert span.attributes["messaging.destination.name"] == "ff.coldchain.dlq.processor-cold-chain"
    assert headers["traceparent"].split("-")[1] == POISON_TRACE, "the dead letter lost its trace"
    assert "not a telemetry batch" in headers["Fleetflow-Error"]
    log = (tmp_path / "logs").glob("processor-*.log")
    lines = [json.loads(line) for path in log for line in path.read_text().splitlines()]
    assert any(r.get("event") == "message dead-lettered" and r.get("trace_id") == POISON_TRACE for r in lines)
