"""What the processor publishes: subjects, deterministic message ids and bodies for every kind of output.

Every id is derived from the input's id or from the identity of the result (a window, an alert transition,
a command's trigger), so reprocessing after a crash publishes duplicates that JetStream drops within the
duplicate window, and the writer's upserts absorb after it."""

import re
from dataclasses import dataclass

from fleetflow.processor.engine import Outputs
from fleetflow.runtime import codec, subjects

RECORD_HEADER = "Fleetflow-Record"
# Every record kind the processor publishes (a metric label; its series exist from the start).
RECORDS = ("readings", "late", "aggregates", "alerts", "alert-events", "commands")
_UNSAFE_TOKEN = re.compile(r"[^A-Za-z0-9_=,-]")


@dataclass(frozen=True)
class Message:
    subject: str
    data: bytes
    msg_id: str
    record: str  # readings, late, aggregates, alerts, alert-events or commands
    trace: tuple[tuple[str, str], ...] = ()  # W3C trace context of the span that produced it

    @property
    def headers(self) -> dict[str, str]:
        return {**dict(self.trace), "Nats-Msg-Id": self.msg_id, RECORD_HEADER: self.record}


def subject_token(group: str) -> str:
    """A window group as one subject token: "device=<id>" becomes the id, label groups keep "site=north"."""
    if group.startswith("device="):
        return group.removeprefix("device=")
    return _UNSAFE_TOKEN.sub("_", group)[:200] or "_"


def messages(
    fleet: str,
    pipeline: str,
    input_id: str | None,
    out: Outputs,
    trace: dict[str, str] | None = None,
    received: tuple[codec.ReadingBatch, bytes] | None = None,
) -> list[Message]:
    """The messages of one input's outputs (input_id None for outputs of the idle timer), each carrying the
    `trace` headers, so one trace follows a batch from the device to the stored rows.

    `received` is the input batch and the bytes it was decoded from. A readings output that is that very
    object (a pipeline without steps forwards its input) is sent as those bytes instead of being encoded
    again: they decode to the same batch, which is all the writer (or a hub's writer) does with them, and for
    what the gateway sends they are the same bytes (codec.encode is canonical)."""
    carried = tuple(trace.items()) if trace else ()
    found: list[Message] = []
    for batch in out.readings:
        data = received[1] if received is not None and batch is received[0] else codec.encode(batch)
        found.append(Message(subjects.pipeline_subject(fleet, pipeline, "readings", batch.device), data,
                             f"{pipeline}/readings/{input_id}", "readings", carried))  # fmt: skip
    for step, readings in out.late.items():
        late = codec.ReadingBatch(fleet=fleet, device=out.device, readings=readings, received_ms=out.received_ms)
        subject = subjects.pipeline_subject(fleet, pipeline, "late", out.device)
        found.append(Message(subject, codec.encode(late), f"{pipeline}/late/{step}/{input_id}", "late", carried))
    for agg in out.aggregates:
        msg_id = f"{pipeline}/aggregates/{agg.step}/{agg.group}/{agg.metric}/{agg.window_start_ms}"
        subject = subjects.pipeline_subject(fleet, pipeline, "aggregates", subject_token(agg.group))
        found.append(Message(subject, codec.encode(agg), msg_id, "aggregates", carried))
    for event in out.alerts:
        msg_id = f"{pipeline}/alerts/{event.rule}/{event.device}/{event.ts_ms}/{event.state}"
        body = codec.encode(event)
        found.append(Message(subjects.pipeline_subject(fleet, pipeline, "alerts", event.device), body, msg_id,
                             "alerts", carried))  # fmt: skip
        found.append(Message(subjects.alert_subject(fleet, event.device), body, msg_id, "alert-events", carried))
    for command in out.commands:
        found.append(Message(subjects.command_subject(fleet, command.device), codec.encode(command), command.id,
                             "commands", carried))  # fmt: skip
    return found
