"""Provisioning on a real nats-server whose JetStream store is as small as a default managed NATS volume's."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.runtime import jetstream
from tests.support.natsserver import configured_server

# What the operator gives JetStream of a default fleet's 10Gi volume (builders.nats.STORE_SHARE = 0.9).
DEFAULT_STORE_BYTES = int(10 * 2**30 * 0.9)


@pytest.fixture
def small_store_url(tmp_path: Path) -> Iterator[str]:
    store = f'jetstream {{ store_dir: "{tmp_path}/js"\n  max_file_store: {DEFAULT_STORE_BYTES} }}\n'
    with configured_server(tmp_path / "nats.conf", store) as url:
        yield url


@pytest.fixture
async def nc(small_store_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(small_store_url)
    yield client
    await client.close()


def pipeline(name: str) -> Pipeline:
    return Pipeline.model_validate({"metadata": {"name": name}, "spec": {"fleetRef": {"name": "yard"}}})


async def test_a_default_fleet_with_several_pipelines_fits_a_default_volume(nc: Client) -> None:
    """JetStream reserves each stream's max_bytes up front; only the telemetry stream may have one."""
    js = nc.jetstream()
    fleet = DeviceFleet.model_validate({"metadata": {"name": "yard"}, "spec": {}})
    await jetstream.provision_fleet(js, fleet)
    for name in ("hot", "cold", "audit"):
        await jetstream.provision_pipeline(js, fleet, pipeline(name))
    reserved = [s.config.max_bytes for s in await js.streams_info()]
    assert sorted(b for b in reserved if b and b > 0) == [fleet.spec.streams.max_bytes_value]
