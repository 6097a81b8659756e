"""Names of subjects, streams and consumers. Every name is derived from validated identifiers only."""

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


def batch_id(fleet: str, device: str, first_seq: int, last_seq: int) -> str:
    """The JetStream message id of a telemetry batch: derived from the data, so a retry is a duplicate."""
    return f"{fleet}/{device}/{first_seq}-{last_seq}"
