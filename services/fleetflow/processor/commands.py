"""Closed-loop commands: when a rule's condition holds, decide whether a command goes to the target now.

Cooldown and TTL are measured against the triggering reading's event time, so replaying the same readings
(after a crash) makes the same decisions and the same command ids. The TTL also guards against actuating on
stale data: a reading older than the TTL (by the wall clock) triggers nothing, because the command would
already have expired on arrival.

The cooldown holds per (triggering device, target). Devices live in partitions that different replicas own,
so a cooldown shared by several devices would depend on which replica sees whom; per device it depends only
on that device's readings, and the results are the same with one replica or many. An actuator shared by N
devices therefore gets at most N commands per cooldown, one for each device whose condition holds."""

from typing import Literal

from fleetflow.api.steps import CommandStep

Decision = Literal["send", "cooldown", "expired", "out_of_order"]


def cooldown_key(device: str, target: str) -> str:
    return f"{device}>{target}"


def decide(spec: CommandStep, last_sent: dict[str, int], key: str, ts: int, now_ms: int) -> Decision:
    """Whether a command triggered at event time `ts` goes out for `key` (see cooldown_key); records it if so."""
    if now_ms - ts > spec.ttl_ms:
        return "expired"
    previous = last_sent.get(key)
    if previous is not None:
        if ts < previous:
            return "out_of_order"
        if ts - previous < spec.cooldown_ms:
            return "cooldown"
    last_sent[key] = ts
    return "send"


def command_id(pipeline: str, step: str, device: str, target: str, ts: int) -> str:
    """Deterministic: rule, triggering device, target and trigger time name a command; a replay is a duplicate."""
    return f"{pipeline}/{step}/{device}/{target}/{ts}"
