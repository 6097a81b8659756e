"""Device-side store-and-forward with the real clients: batches wait while the gateway is unreachable and are
resent once it is up, each stored once (over HTTP, gRPC, WebSocket and CoAP); simulated devices over MQTT."""

import asyncio
from pathlib import Path

import aiohttp
import pytest

from fleetflow.device.forwarding import StoreAndForward
from fleetflow.device.protocols import make_link, simulate_protocol
from fleetflow.local.ports import free_udp_port
from fleetflow.runtime import credentials
from tests.integration.connectivity.conftest import FLEET, MqttPlatform, start_gateway, stop_gateway
from tests.integration.connectivity.test_grpc import readings
from tests.support.natsserver import NatsServer, free_port


@pytest.mark.parametrize("protocol", ["http", "grpc", "ws", "coap"])
async def test_batches_wait_for_an_unreachable_gateway_and_are_stored_once(
    tmp_path: Path, nats_server: NatsServer, protocol: str
) -> None:
    http_port, grpc_port, coap_port = free_port(), free_port(), free_udp_port()
    target = {"http": f"http://127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}",
              "ws": f"ws://127.0.0.1:{http_port}", "coap": f"coap://127.0.0.1:{coap_port}"}[protocol]  # fmt: skip
    secret = credentials.ensure_local_secret(tmp_path, FLEET)  # the gateway below reads the same secret
    token = credentials.device_token(secret, FLEET, "field-1")
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        forward = StoreAndForward(make_link(protocol, target, FLEET, "field-1", token, session), max_backoff=0.3)
        runner = asyncio.create_task(forward.run(stop))
        for i in range(10):
            assert forward.submit(readings(i * 10, 10))
        await asyncio.sleep(1)
        assert forward.pending == 10 and forward.stats.acknowledged == 0  # nobody to send to
        gw = await start_gateway(tmp_path, nats_server.url, listen_port=http_port, grpc_port=grpc_port,
                                 coap_port=coap_port)  # fmt: skip
        try:
            await asyncio.wait_for(forward.idle.wait(), 20)
            assert forward.stats.acknowledged == 100 and forward.stats.resent > 0
            stop.set()
            await runner
            await forward.link.close()
            assert sorted(await gw.stored_readings("field-1")) == list(range(100))
        finally:
            await stop_gateway(gw)


def test_a_full_queue_refuses_more() -> None:
    forward = StoreAndForward(make_link("grpc", "127.0.0.1:1", FLEET, "d-1", "t"), max_batches=2)
    assert forward.submit(readings(0, 1)) and forward.submit(readings(1, 1))
    assert not forward.submit(readings(2, 1))
    assert forward.stats.dropped == 1 and forward.pending == 2


async def test_simulated_devices_over_mqtt_store_what_was_acknowledged(mqtt_platform: MqttPlatform) -> None:
    gw = mqtt_platform.gateway
    tokens = {f"sim-{i}": gw.token(f"sim-{i}") for i in range(3)}
    stop = asyncio.Event()
    run = asyncio.create_task(simulate_protocol("mqtt", f"mqtt://127.0.0.1:{mqtt_platform.mqtt_port}", FLEET,
                                                tokens, stop, batch_size=5, interval=0.1, seed=1))  # fmt: skip
    await asyncio.sleep(1.5)
    stop.set()
    report = await run
    assert report.acknowledged >= 3 * 5 * 5 and report.rejected == 0
    stored = 0
    for _ in range(50):
        stored = sum([len(await gw.stored_readings(d)) for d in tokens])
        if stored == report.acknowledged:
            break
        await asyncio.sleep(0.2)
    assert stored == report.acknowledged
