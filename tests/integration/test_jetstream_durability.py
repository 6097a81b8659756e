"""The embedded nats-server fsyncs before every ack when asked to (`fleetflow bench --durability strict`)."""

from pathlib import Path

import aiohttp
import pytest

from fleetflow.local.natsserver import EmbeddedNats


async def jetstream_config(sync_interval: str | None, data_dir: Path) -> dict[str, object]:
    server = EmbeddedNats(data_dir)
    server.sync_interval = sync_interval
    await server.start()
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{server.monitor_url}/varz") as response:
            varz = await response.json()
    finally:
        await server.stop()
    config: dict[str, object] = varz["jetstream"]["config"]
    return config


@pytest.mark.parametrize(("sync_interval", "always"), [("always", True), (None, False)])
async def test_sync_always_only_when_asked(tmp_path: Path, sync_interval: str | None, always: bool) -> None:
    config = await jetstream_config(sync_interval, tmp_path)
    assert bool(config.get("sync_always")) is always
