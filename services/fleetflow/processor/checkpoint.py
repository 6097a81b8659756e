"""Checkpoints of a processor replica's state in a JetStream object store.

One object per replica holds the engine state and the stream sequence of the last input applied to it. The
object store is used rather than a KV bucket because window state can outgrow a single NATS message; it
replaces an object atomically (its meta message is written last). A checkpoint written for other steps (the
Pipeline was edited) is not restored: its state would not fit; the position it records still is."""

import hashlib
import time

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from fleetflow.api import Pipeline
from fleetflow.processor.engine import EngineState


class Checkpoint(msgspec.Struct):
    steps_digest: str
    saved_ms: int
    state: EngineState


def steps_digest(pipeline: Pipeline) -> str:
    """Identifies the steps' spec: state saved for other steps must not be restored into these."""
    text = msgspec.json.encode([step.to_k8s() for step in pipeline.spec.steps])
    return hashlib.sha256(text).hexdigest()[:16]


def bucket_name(fleet: str, pipeline: str) -> str:
    return f"ff-{fleet}-{pipeline}-state"


def object_name(replica: int, replicas: int) -> str:
    """Per replica and replica count: another count owns other partitions, so its state does not apply."""
    return f"replica-{replica}-of-{replicas}"


class CheckpointStore:
    def __init__(self, js: JetStreamContext, fleet: str, pipeline: Pipeline, replica: int, stream_replicas: int):
        self.js = js
        self.bucket = bucket_name(fleet, pipeline.name)
        self.name = object_name(replica, pipeline.spec.processor.replicas)
        self.digest = steps_digest(pipeline)
        self.stream_replicas = stream_replicas
        self._store: ObjectStore | None = None

    async def _bucket(self) -> ObjectStore:
        if self._store is None:
            try:
                self._store = await self.js.object_store(self.bucket)
            except (BucketNotFoundError, NotFoundError):
                self._store = await self.js.create_object_store(
                    self.bucket, description="fleetflow processor checkpoints", replicas=self.stream_replicas
                )
        return self._store

    async def load(self) -> EngineState | None:
        """The saved state, a state with only the position if the steps changed, or None if nothing is saved."""
        store = await self._bucket()
        try:
            data = (await store.get(self.name)).data
        except (ObjectNotFoundError, NotFoundError):
            return None
        if not data:
            return None
        checkpoint = msgspec.msgpack.decode(data, type=Checkpoint)
        if checkpoint.steps_digest != self.digest:
            return EngineState(applied_seq=checkpoint.state.applied_seq)
        return checkpoint.state

    async def save(self, state: EngineState) -> int:
        """Write the state; returns its size in bytes."""
        data = msgspec.msgpack.encode(Checkpoint(self.digest, int(time.time() * 1000), state))
        await (await self._bucket()).put(self.name, data)
        return len(data)
