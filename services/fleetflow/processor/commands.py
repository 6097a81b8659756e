"""Closed-loop commands: when a rule's condition holds, decide whether a command goes to the target now.

Cooldown and TTL are measured against the triggering reading's event time, so replaying the same readings
(after a crash) makes the same decisions and the same command ids. The TTL also guards against actuating on
stale data: a reading older than the TTL (by the wall clock) triggers nothing, because the command would
already have expired on arrival."""

from typing import Literal

from fleetflow.api.steps import CommandStep

Decision = Literal["send", "cooldown", "expired", "out_of_order"]


def decide(spec: CommandStep, last_sent: dict[str, int], target: str, ts: int, now_ms: int) -> Decision:
    """Whether a command triggered at event time `ts` goes to `target`; records it in `last_sent` if so."""
    if now_ms - ts > spec.ttl_ms:
        return "expired"
    previous = last_sent.get(target)
    if previous is not None:
        if ts < previous:
            return "out_of_order"
        if ts - previous < spec.cooldown_ms:
            return "cooldown"
    last_sent[target] = ts
    return "send"


def command_id(pipeline: str, step: str, target: str, ts: int) -> str:
    """Deterministic: the rule, the target and the trigger time name a command, so a replay is a duplicate."""
    return f"{pipeline}/{step}/{target}/{ts}"
