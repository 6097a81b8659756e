"""Checkpoints in the JetStream object store: round trip, and edited steps keep only the position."""

from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client

from fleetflow.api import Pipeline
from fleetflow.processor.checkpoint import CheckpointStore
from fleetflow.processor.dedupe import SeenSeqs
from fleetflow.processor.engine import EngineState
from fleetflow.processor.windows import KeyWindows
from tests.support.natsserver import NatsServer
from tests.unit.processor.builders import pipeline


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


def store(nc: Client, p: Pipeline) -> CheckpointStore:
    return CheckpointStore(nc.jetstream(), "cold", p, replica=0, stream_replicas=1)


STEPS = [{"name": "w", "window": {"size": "10s"}}]


async def test_a_checkpoint_round_trips_and_nothing_saved_is_none(nc: Client) -> None:
    assert await store(nc, pipeline(STEPS)).load() is None
    state = EngineState(applied_seq=42, windows={"w": {"device=a": KeyWindows(newest_ts=5, closed_until=1)}})
    size = await store(nc, pipeline(STEPS)).save(state)
    assert size > 0
    assert await store(nc, pipeline(STEPS)).load() == state


async def test_state_saved_for_other_steps_restores_only_the_position(nc: Client) -> None:
    state = EngineState(applied_seq=42, windows={"w": {"device=a": KeyWindows(newest_ts=5)}})
    await store(nc, pipeline(STEPS)).save(state)
    edited = pipeline([{"name": "w", "window": {"size": "20s"}}])
    assert await store(nc, edited).load() == EngineState(applied_seq=42)


async def test_large_state_outgrows_one_nats_message(nc: Client) -> None:
    seen = {f"device-{d}": SeenSeqs(seqs={s: 1_700_000_000_000 + s for s in range(400)}) for d in range(400)}
    state = EngineState(applied_seq=7, dedupe={"once": seen})
    size = await store(nc, pipeline(STEPS)).save(state)
    assert size > 1024 * 1024  # above the default max_payload
    assert await store(nc, pipeline(STEPS)).load() == state
