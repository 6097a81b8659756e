"""Alert rules: one state machine per device, driven by event time.

    ok --condition--> pending --held for `for`--> firing --clear--> clearing --held for `clearFor`--> ok

A `for` or `clearFor` of 0 skips the waiting state. Leaving `pending` or `clearing` early (the condition
dropped, or the clear condition stopped holding) goes back without an event, so a flapping signal shorter
than `for` never fires, and one that dips only between the firing and the clear threshold stays firing."""

from enum import StrEnum

import msgspec

from fleetflow.api.steps import AlertStep


class Phase(StrEnum):
    OK = "ok"
    PENDING = "pending"
    FIRING = "firing"
    CLEARING = "clearing"


class AlertState(msgspec.Struct, array_like=True):
    phase: Phase = Phase.OK
    since_ms: int = 0
    last_ts: int = -(2**62)


class Transition(msgspec.Struct):
    state: str  # "firing" or "resolved"
    ts_ms: int


def step_alert(spec: AlertStep, state: AlertState, ts: int, condition: bool, clear: bool) -> Transition | None:
    """Advance one device's state by one reading; the transition it caused, if any. `clear` is the clear
    condition's value (callers pass `not condition` when the rule has none). Older readings are ignored."""
    if ts < state.last_ts:
        return None
    state.last_ts = ts
    if state.phase in (Phase.OK, Phase.PENDING):
        return _towards_firing(spec, state, ts, condition)
    return _towards_resolved(spec, state, ts, clear)


def _towards_firing(spec: AlertStep, state: AlertState, ts: int, condition: bool) -> Transition | None:
    if not condition:
        state.phase = Phase.OK
        return None
    if state.phase == Phase.OK:
        state.phase, state.since_ms = Phase.PENDING, ts
    if ts - state.since_ms >= spec.for_ms:
        state.phase, state.since_ms = Phase.FIRING, ts
        return Transition("firing", ts)
    return None


def _towards_resolved(spec: AlertStep, state: AlertState, ts: int, clear: bool) -> Transition | None:
    if not clear:
        state.phase = Phase.FIRING
        return None
    if state.phase == Phase.FIRING:
        state.phase, state.since_ms = Phase.CLEARING, ts
    if ts - state.since_ms >= spec.clear_for_ms:
        state.phase, state.since_ms = Phase.OK, ts
        return Transition("resolved", ts)
    return None
