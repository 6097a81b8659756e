"""Names of subjects, streams and consumers. Every name is derived from validated identifiers only."""

import hashlib
from collections.abc import Sequence
from typing import Protocol

import msgspec

TELEMETRY = "tm"


def telemetry_subject(fleet: str, device: str) -> str:
    """Where the gateway publishes a device's batches; the stream maps it into a partition."""
    return f"ff.{fleet}.{TELEMETRY}.{device}"


def telemetry_partition_filter(fleet: str, partition: int) -> str:
    return f"ff.{fleet}.{TELEMETRY}.{partition}.*"


def telemetry_stream(fleet: str) -> str:
    return f"ff-{fleet}-telemetry"


def commands_stream(fleet: str) -> str:
    return f"ff-{fleet}-commands"


def alerts_stream(fleet: str) -> str:
    return f"ff-{fleet}-alerts"


def dead_letter_stream(fleet: str) -> str:
    return f"ff-{fleet}-deadletter"


def command_subject(fleet: str, device: str) -> str:
    return f"ff.{fleet}.cmd.{device}"


def alert_subject(fleet: str, device: str) -> str:
    return f"ff.{fleet}.alert.{device}"


def dead_letter_subject(fleet: str, source: str) -> str:
    return f"ff.{fleet}.dlq.{source}"


def pipeline_stream(fleet: str, pipeline: str) -> str:
    """The stream between a pipeline's processor and its writer."""
    return f"ff-{fleet}-{pipeline}-out"


def pipeline_subject(fleet: str, pipeline: str, record: str, device: str) -> str:
    """`record` is the kind of output: readings, aggregates, alerts, late."""
    return f"ff.{fleet}.pl.{pipeline}.{record}.{device}"


def processor_consumer(pipeline: str, replica: int) -> str:
    return f"processor-{pipeline}-{replica}"


def writer_consumer(pipeline: str) -> str:
    return f"writer-{pipeline}"


def command_state_bucket(fleet: str) -> str:
    """The key-value bucket of the fleet's command states (fleetflow.runtime.commands)."""
    return f"ff-{fleet}-command-state"


def command_state_stream(fleet: str) -> str:
    """The stream JetStream keeps the bucket in: every state change of every command is a message on it."""
    return f"KV_{command_state_bucket(fleet)}"


def command_state_changes(fleet: str) -> str:
    """The subjects of the bucket's entries, `$KV.<bucket>.<device>.<command key>`."""
    return f"$KV.{command_state_bucket(fleet)}.>"


def command_log_consumer(pipeline: str) -> str:
    """The writer's durable consumer of command state changes, which it copies into its store's command log."""
    return f"command-log-{pipeline}"


class _Identified(Protocol):
    seq: int
    ts: int


_pairs = msgspec.msgpack.Encoder().encode


def batch_id(fleet: str, device: str, readings: Sequence[_Identified]) -> str:
    """The JetStream message id of a telemetry batch: derived from the data, so a retry is a duplicate.

    `(device, ts, seq)` identifies a reading, so the id covers every reading's (seq, ts), not only the seq range:
    a batch that reuses a range with other readings (a device that restarted its seq) is new data."""
    digest = hashlib.blake2b(_pairs([(r.seq, r.ts) for r in readings]), digest_size=10).hexdigest()
    return f"{fleet}/{device}/{readings[0].seq}-{readings[-1].seq}/{digest}"
