"""Store-and-forward in the gateway: NATS stops under load, the gateway keeps accepting into its disk buffer,
and once NATS is back every acknowledged reading is stored exactly once and the buffer drains to zero."""

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from fleetflow.device.http import HttpDevice
from fleetflow.gateway import publisher
from tests.integration.connectivity.conftest import FLEET, Gateway, start_gateway, stop_gateway
from tests.support.natsserver import NatsServer, running_nats


def batch(first: int, count: int) -> list[dict]:
    now = int(time.time() * 1000)
    return [{"seq": s, "ts": now, "metrics": {"temperature": 5.0}} for s in range(first, first + count)]


async def wait_until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout}s")
        await asyncio.sleep(0.05)


def buffered_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.batch"))


async def test_an_outage_under_load_loses_and_duplicates_nothing(tmp_path: Path, nats_server: NatsServer) -> None:
    buffer_dir = tmp_path / "buffer"
    gw = await start_gateway(tmp_path, nats_server.url, buffer_dir=buffer_dir)
    acknowledged: dict[str, list[int]] = {"sensor-1": [], "sensor-2": []}
    stop = asyncio.Event()

    async def device_loop(session: aiohttp.ClientSession, device_id: str) -> None:
        device = HttpDevice(session, gw.url, FLEET, device_id, gw.token(device_id))
        seq = 0
        while not stop.is_set():
            readings = batch(seq, 5)
            result = await device.send(readings)
            if result.acknowledged:
                acknowledged[device_id].extend(r["seq"] for r in readings)
                seq += 5
            await asyncio.sleep(0.01)

    try:
        async with aiohttp.ClientSession() as session:
            loops = [asyncio.create_task(device_loop(session, d)) for d in acknowledged]
            await wait_until(lambda: len(acknowledged["sensor-1"]) >= 50, 10, "sending")
            nats_server.process.terminate()
            await asyncio.to_thread(nats_server.process.wait, 10)
            before = sum(map(len, acknowledged.values()))
            await wait_until(lambda: len(buffered_files(buffer_dir)) >= 20, 15, "buffering")
            async with session.get(f"http://127.0.0.1:{gw.status['ops_port']}/readyz") as ready:
                # still ready: on a cluster the Service must keep sending devices to a buffering gateway
                assert ready.status == 200 and "buffering to disk" in (await ready.json())["reason"]
            outage_started = time.monotonic()
            await asyncio.sleep(2)
            with running_nats(nats_server.store_dir, nats_server.port):
                await wait_until(lambda: not buffered_files(buffer_dir), 30, "drained")
                drain_s = time.monotonic() - outage_started
                stop.set()
                await asyncio.gather(*loops)
                assert sum(map(len, acknowledged.values())) > before + 20  # accepted during the outage
                for device_id, seqs in acknowledged.items():
                    stored = await gw.stored_readings(device_id)
                    assert sorted(stored) == seqs, f"{device_id}: stored {len(stored)}, acknowledged {len(seqs)}"
                assert drain_s < 30
                await stop_gateway(gw)
    finally:
        stop.set()
        if not gw.task.done():
            gw.stop.set()
            await asyncio.wait_for(gw.task, 30)


async def test_a_full_buffer_answers_503_with_retry_after(tmp_path: Path, nats_server: NatsServer) -> None:
    gw: Gateway = await start_gateway(tmp_path, nats_server.url, buffer_dir=tmp_path / "buffer",
                                      buffer_max_bytes=4096)  # fmt: skip
    nats_server.process.terminate()
    await asyncio.to_thread(nats_server.process.wait, 10)
    try:
        async with aiohttp.ClientSession() as session:
            device = HttpDevice(session, gw.url, FLEET, "sensor-3", gw.token("sensor-3"))
            statuses = []
            for i in range(40):
                result = await device.send(batch(i * 10, 10))
                statuses.append(result.status)
                if result.status == 503:
                    assert result.body["error"] == "buffer_full"
                    assert "4096" in result.body["detail"]
                    break
            assert statuses[0] == 202 and statuses[-1] == 503
    finally:
        gw.stop.set()
        await asyncio.wait_for(gw.task, 30)
    assert buffered_files(tmp_path / "buffer")  # kept on disk for the next start


async def test_a_batch_in_flight_when_the_connection_drops_is_buffered_at_once(
    tmp_path: Path, nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JetStream never answers a publish sent on a connection that then drops; the device must not wait out
    the publish timeout (made 60 s here) before its batch is buffered and acknowledged."""
    monkeypatch.setattr(publisher, "PUBLISH_TIMEOUT", 60.0)
    buffer_dir = tmp_path / "buffer"
    gw = await start_gateway(tmp_path, nats_server.url, buffer_dir=buffer_dir)
    try:
        async with aiohttp.ClientSession() as session:
            device = HttpDevice(session, gw.url, FLEET, "sensor-4", gw.token("sensor-4"))
            assert (await device.send(batch(0, 5))).status == 202
            nats_server.process.send_signal(signal.SIGSTOP)  # the server holds the connection but answers nothing
            sending = asyncio.create_task(device.send(batch(5, 5), timeout=60))
            await asyncio.sleep(0.5)  # let the publish reach the frozen server's socket
            assert not sending.done()
            started = time.monotonic()
            nats_server.process.kill()  # the kernel closes its sockets: the gateway sees the connection drop
            result = await asyncio.wait_for(sending, 30)
            assert result.status == 202, result.body
            assert time.monotonic() - started < 20, "the batch waited for the publish timeout"
            assert len(buffered_files(buffer_dir)) == 1
    finally:
        gw.stop.set()
        await asyncio.wait_for(gw.task, 30)
