"""The step engine: a pure function of the readings it is given, in order, and its state (no NATS here).

Each reading runs through the steps in order. A filter or dedupe can drop it; a derive changes its metrics;
window, alert and command steps observe it and pass it on. What survives every step is the processed
reading. The whole state is one msgspec struct, so the service can checkpoint and restore it."""

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import cel
import msgspec

from fleetflow.api import identifiers
from fleetflow.processor import alerts, commands, dedupe
from fleetflow.processor.alerts import AlertState
from fleetflow.processor.compiler import CompiledPipeline, CompiledStep
from fleetflow.processor.dedupe import SeenSeqs
from fleetflow.processor.expressions import RUNTIME_REASONS, EvaluationError, Expression
from fleetflow.processor.windows import KeyWindows, WindowOperator, group_key
from fleetflow.runtime.codec import AlertEvent, Command, Reading, ReadingBatch, WindowAggregate


class EngineState(msgspec.Struct):
    """Everything the engine remembers, keyed by step name; `applied_seq` is the last input applied."""

    applied_seq: int = 0
    windows: dict[str, dict[str, KeyWindows]] = msgspec.field(default_factory=dict)
    alerts: dict[str, dict[str, AlertState]] = msgspec.field(default_factory=dict)
    commands: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    dedupe: dict[str, dict[str, SeenSeqs]] = msgspec.field(default_factory=dict)


@dataclass
class Outputs:
    """What processing produced. `late` maps a window step to the readings it could no longer place."""

    readings: list[ReadingBatch] = field(default_factory=list)
    aggregates: list[WindowAggregate] = field(default_factory=list)
    alerts: list[AlertEvent] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    late: dict[str, list[Reading]] = field(default_factory=dict)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (step, outcome) -> readings
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)  # (step, reason) -> evaluation errors
    error_examples: dict[tuple[str, str], str] = field(default_factory=dict)  # (step, reason) -> one error, for logs
    device: str = ""  # the input batch's device and receive time, for the late-reading batches
    received_ms: int = 0

    def __bool__(self) -> bool:
        return bool(self.readings or self.aggregates or self.alerts or self.commands or self.late)


class ReadingScope:
    """One reading as CEL sees it. Contexts are built per set of variables the expressions read, and
    rebuilt only after a derive changed the metrics."""

    def __init__(self, device: str, labels: dict[str, str], reading: Reading):
        self.device, self.labels, self.reading = device, labels, reading
        self.metrics = dict(reading.metrics)
        self._contexts: dict[tuple[object, ...], Any] = {}

    def context(self, expr: Expression) -> Any:
        found = self._contexts.get(expr.scope_key)
        if found is None:
            values: dict[str, Any] = {}
            for name in expr.needs:
                if name == "metrics":
                    values[name] = _subset(self.metrics, expr.metric_fields)
                elif name == "labels":
                    values[name] = _subset(self.labels, expr.label_fields)
                else:
                    values[name] = {"device": self.device, "ts": self.reading.ts, "seq": self.reading.seq}[name]
            found = self._contexts[expr.scope_key] = cel.Context(variables=values)
        return found

    def set_metric(self, name: str, value: float) -> None:
        self.metrics[name] = value
        self._forget(name)

    def pop_metric(self, name: str) -> float | None:
        value = self.metrics.pop(name, None)
        if value is not None:
            self._forget(name)
        return value

    def _forget(self, metric: str) -> None:
        """Drop the contexts that hold `metric` (or every metric); the others are still right."""
        for key in list(self._contexts):
            needs, fields, _ = key
            if "metrics" in needs and (fields is None or metric in fields):  # type: ignore[operator]
                del self._contexts[key]

    def evaluate(self, expr: Expression) -> Any:
        return expr.evaluate(self.context(expr))

    def processed(self) -> Reading:
        return Reading(self.reading.seq, self.reading.ts, dict(self.metrics))  # later steps may change metrics


def _subset(values: dict[str, Any], fields: tuple[str, ...] | None) -> dict[str, Any]:
    if fields is None:
        return values
    return {name: values[name] for name in fields if name in values}


# Per step kind, what an evaluation error can be besides RUNTIME_REASONS: a result of the wrong kind (only
# a `dyn(...)` gets past the type check with one) or a target that is not a device id.
_RESULT_REASONS = {
    "filter": ("not_boolean",),
    "derive": ("not_a_number",),
    "alert": ("not_boolean",),
    "command": ("not_boolean", "bad_target"),
}


# Per step kind, every outcome it counts a reading under (Outputs.counts), so the series exist from the start.
_OUTCOMES = {
    "dedupe": ("passed", "duplicate"),
    "filter": ("passed", "dropped"),
    "derive": ("derived",),
    "window": ("windowed", "late", "ungrouped"),
    "alert": ("firing", "resolved"),
    "command": ("command_send", "command_expired", "command_out_of_order", "command_cooldown"),
}


def step_outcomes(step: CompiledStep) -> tuple[str, ...]:
    """Every outcome `step` can count a reading under."""
    return _OUTCOMES.get(step.kind, ())


def error_reasons(step: CompiledStep) -> tuple[str, ...]:
    """Every reason an evaluation error of `step` can have; none for a step without expressions."""
    if not step.expressions:
        return ()
    return RUNTIME_REASONS + _RESULT_REASONS.get(step.kind, ())


def evaluate_bool(expr: Expression, scope: ReadingScope) -> bool:
    return as_bool(expr, scope.evaluate(expr))


def evaluate_number(expr: Expression, scope: ReadingScope) -> float:
    return as_number(expr, scope.evaluate(expr))


def as_bool(expr: Expression, value: Any) -> bool:
    """`value`, which `expr` gave, as a condition; EvaluationError if it is not true or false."""
    if not isinstance(value, bool):
        raise EvaluationError("not_boolean", f"{expr.path}: {expr.source!r} gave {value!r}, not true or false")
    return value


def as_number(expr: Expression, value: Any) -> float:
    """`value`, which `expr` gave, as a metric; EvaluationError if it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise EvaluationError("not_a_number", f"{expr.path}: {expr.source!r} gave {value!r}, not a finite number")
    return float(value)


class Engine:
    def __init__(self, pipeline: CompiledPipeline, state: EngineState | None = None, now_ms: int = 0):
        self.pipeline = pipeline
        self.state = state or EngineState()
        self.windows = {
            step.name: WindowOperator(
                pipeline.fleet,
                pipeline.pipeline,
                step.name,
                step.spec.window,
                self.state.windows.setdefault(step.name, {}),
            )
            for step in pipeline.steps
            if step.spec.window is not None
        }
        for operator in self.windows.values():
            operator.restored(now_ms)

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.state)

    @classmethod
    def restore(cls, pipeline: CompiledPipeline, data: bytes, now_ms: int) -> "Engine":
        return cls(pipeline, msgspec.msgpack.decode(data, type=EngineState), now_ms)

    def process(self, batch: ReadingBatch, now_ms: int) -> Outputs:
        """Run one device's batch through the steps; `now_ms` is the wall clock (idle timers and TTLs)."""
        out = Outputs(device=batch.device, received_ms=batch.received_ms)
        if not self.pipeline.steps:  # a pipeline that only stores: no per-reading work at all
            out.readings.append(batch)
            return out
        labels = self.pipeline.labels_of(batch.device)
        survivors = []
        for reading in batch.readings:
            scope = ReadingScope(batch.device, labels, reading)
            if all(self._run(step, scope, now_ms, out) for step in self.pipeline.steps):
                survivors.append(scope.processed())
        if survivors:
            out.readings.append(
                ReadingBatch(fleet=batch.fleet, device=batch.device, readings=survivors, received_ms=batch.received_ms)
            )
        return out

    def advance(self, now_ms: int) -> Outputs:
        """Close the windows of devices and groups that went quiet (by the wall clock)."""
        out = Outputs()
        for operator in self.windows.values():
            out.aggregates.extend(operator.close_idle(now_ms))
        return out

    def _run(self, step: CompiledStep, scope: ReadingScope, now_ms: int, out: Outputs) -> bool:
        """Apply one step to one reading; False drops the reading from the following steps and the output."""
        try:
            return self._apply(step, scope, now_ms, out)
        except EvaluationError as exc:
            _count_error(out, step, scope, exc)
            # A filter that cannot judge a reading must not pass it; other steps leave it as it is.
            return step.kind != "filter"

    def _apply(self, step: CompiledStep, scope: ReadingScope, now_ms: int, out: Outputs) -> bool:
        kind = step.kind
        if kind == "dedupe":
            return self._dedupe(step, scope, out)
        if kind == "filter":
            kept = evaluate_bool(step.expr("condition"), scope)
            out.counts[(step.name, "passed" if kept else "dropped")] += 1
            return kept
        if kind == "derive":
            return self._derive(step, scope, out)
        if kind == "window":
            self._window(step, scope, now_ms, out)
        elif kind == "alert":
            self._alert(step, scope, out)
        elif kind == "command":
            self._command(step, scope, now_ms, out)
        return True

    def _dedupe(self, step: CompiledStep, scope: ReadingScope, out: Outputs) -> bool:
        assert step.spec.dedupe is not None
        seen = self.state.dedupe.setdefault(step.name, {}).setdefault(scope.device, SeenSeqs())
        new = dedupe.first_time(seen, scope.reading.seq, scope.reading.ts, step.spec.dedupe.horizon_ms)
        out.counts[(step.name, "passed" if new else "duplicate")] += 1
        return new

    def _derive(self, step: CompiledStep, scope: ReadingScope, out: Outputs) -> bool:
        spec = step.spec.derive
        assert spec is not None
        for name in spec.metrics:
            try:
                scope.set_metric(name, evaluate_number(step.expr(f"metrics.{name}"), scope))
            except EvaluationError as exc:  # this metric stays unset (or as it was); the others still count
                _count_error(out, step, scope, exc)
        for old, new in spec.rename.items():
            value = scope.pop_metric(old)
            if value is not None:
                scope.set_metric(new, value)
        for name in spec.drop:
            scope.pop_metric(name)
        out.counts[(step.name, "derived")] += 1
        return True

    def _window(self, step: CompiledStep, scope: ReadingScope, now_ms: int, out: Outputs) -> None:
        assert step.spec.window is not None
        key = group_key(step.spec.window, scope.device, scope.labels)
        if key is None:
            out.counts[(step.name, "ungrouped")] += 1
            return
        operator = self.windows[step.name]
        placement = operator.add(key, scope.reading.ts, scope.reading.seq, scope.metrics, now_ms)
        if placement.missed:
            out.counts[(step.name, "late")] += 1
            out.late.setdefault(step.name, []).append(scope.processed())
        else:
            out.counts[(step.name, "windowed")] += 1
        out.aggregates.extend(operator.close_passed(key))

    def _alert(self, step: CompiledStep, scope: ReadingScope, out: Outputs) -> None:
        spec = step.spec.alert
        assert spec is not None
        condition = evaluate_bool(step.expr("condition"), scope)
        clear = evaluate_bool(step.expr("clear"), scope) if spec.clear is not None else not condition
        state = self.state.alerts.setdefault(step.name, {}).setdefault(scope.device, AlertState())
        transition = alerts.step_alert(spec, state, scope.reading.ts, condition, clear)
        if transition is None:
            return
        out.counts[(step.name, transition.state)] += 1
        out.alerts.append(
            AlertEvent(
                fleet=self.pipeline.fleet,
                pipeline=self.pipeline.pipeline,
                rule=step.name,
                device=scope.device,
                state=transition.state,
                severity=spec.severity,
                ts_ms=transition.ts_ms,
                values=dict(scope.metrics),
                message=spec.message,
            )
        )

    def _command(self, step: CompiledStep, scope: ReadingScope, now_ms: int, out: Outputs) -> None:
        spec = step.spec.command
        assert spec is not None
        if not evaluate_bool(step.expr("condition"), scope):
            return
        target = scope.evaluate(step.expr("target"))
        if not isinstance(target, str) or not identifiers.DEVICE_ID.fullmatch(target):
            raise EvaluationError("bad_target", f"{step.name}: target {target!r} is not a device id")
        last_sent = self.state.commands.setdefault(step.name, {})
        key = commands.cooldown_key(scope.device, target)
        decision = commands.decide(spec, last_sent, key, scope.reading.ts, now_ms)
        out.counts[(step.name, f"command_{decision}")] += 1
        if decision != "send":
            return
        params: dict[str, Any] = dict(spec.params)
        for name in spec.computed_params:
            params[name] = plain(scope.evaluate(step.expr(f"computedParams.{name}")))
        out.commands.append(
            Command(
                id=commands.command_id(self.pipeline.pipeline, step.name, scope.device, target, scope.reading.ts),
                fleet=self.pipeline.fleet,
                device=target,
                name=spec.command,
                params=params,
                created_ms=scope.reading.ts,
                ttl_ms=spec.ttl_ms,
                source=f"pipeline/{self.pipeline.pipeline}/{step.name}",
            )
        )


def _count_error(out: Outputs, step: CompiledStep, scope: ReadingScope, exc: EvaluationError) -> None:
    count_error(out, step.name, scope.device, scope.reading.seq, exc)


def count_error(out: Outputs, step: str, device: str, seq: int, exc: EvaluationError) -> None:
    """Count one evaluation error of `step`; the first of each reason is kept as the example for the log."""
    key = (step, exc.reason)
    out.errors[key] += 1
    out.error_examples.setdefault(key, f"device {device} seq {seq}: {exc}")


def plain(value: Any) -> float | int | str | bool | None:
    """A computed parameter as JSON scalar; anything richer (lists, maps, timestamps) becomes its text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
