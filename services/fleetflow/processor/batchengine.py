"""The step engine for the hot path: each step runs over a whole device batch, its CEL compiled to Python.

`Engine` (engine.py) takes one reading through every step, building a `cel.Context` for each expression;
it stays as the reference. `BatchEngine` gives the same outputs and the same state for any input (a
differential test holds it to that) at a fraction of the cost:

- Steps run step after step over the batch's surviving readings instead of reading after reading. A step
  reads and writes only its own state, and sees each reading as the earlier steps left it, so the order
  changes nothing but the order in which different steps append to the same output list; each output is
  tagged with its reading and step and the lists are put back in the reference's order at the end.
- What is the same for the whole batch (device, labels, window key, per-device state) is looked up once.
- CEL runs as native Python functions (celnative.py), with the library as the fallback per reading.
- Metrics are copied only by a derive; a reading no step changed goes out as the object that came in."""

import abc
import itertools
import time
from collections.abc import Callable
from typing import Any

from fleetflow.api import identifiers
from fleetflow.processor import alerts, commands, dedupe
from fleetflow.processor.alerts import AlertState, Phase
from fleetflow.processor.celnative import Evaluator, library_evaluator, native_evaluator
from fleetflow.processor.compiler import CompiledPipeline, CompiledStep
from fleetflow.processor.dedupe import SeenSeqs
from fleetflow.processor.derivenative import FAILED, SlowPath, derive_function
from fleetflow.processor.engine import Engine, EngineState, Outputs, as_bool, as_number, count_error, plain
from fleetflow.processor.expressions import EvaluationError
from fleetflow.processor.windows import NEVER, Accumulator, KeyWindows, group_key, window_starts
from fleetflow.runtime.codec import AlertEvent, Command, Reading, ReadingBatch


class Batch:
    """One device's batch on its way through the steps: `metrics[i]` is reading i as the steps so far left
    it; `emitted` holds (reading, step, output list, output) until the outputs are put in order."""

    __slots__ = ("device", "emitted", "labels", "metrics", "now_ms", "out", "readings")

    def __init__(self, batch: ReadingBatch, labels: dict[str, str], now_ms: int):
        self.device, self.labels, self.now_ms = batch.device, labels, now_ms
        self.readings = batch.readings
        self.metrics = [r.metrics for r in batch.readings]
        self.out = Outputs(device=batch.device, received_ms=batch.received_ms)
        self.emitted: list[tuple[int, int, str, Any]] = []

    def count(self, step: str, outcome: str, readings: int) -> None:
        if readings:
            self.out.counts[(step, outcome)] += readings

    def error(self, step: str, i: int, exc: EvaluationError) -> None:
        count_error(self.out, step, self.device, self.readings[i].seq, exc)

    def processed(self, alive: list[int]) -> list[Reading]:
        """The readings at `alive` as they leave the steps; the input object itself where no step changed it."""
        readings, metrics = self.readings, self.metrics
        return [
            reading
            if (changed := metrics[i]) is (reading := readings[i]).metrics
            else Reading(reading.seq, reading.ts, changed)
            for i in alive
        ]


class StepRunner(abc.ABC):
    """One step over the readings of a batch still in the pipeline (`alive`, indices in order); returns
    those that go on to the next step."""

    def __init__(self, engine: "BatchEngine", step: CompiledStep):
        self.engine, self.step, self.name = engine, step, step.name
        self.evaluators = self.compile(step)

    def compile(self, step: CompiledStep) -> dict[str, Evaluator]:
        """The step's expressions as native evaluators, by key (what value() calls)."""
        return {key: native_evaluator(expr) for key, expr in step.expressions.items()}

    @abc.abstractmethod
    def run(self, batch: Batch, alive: list[int]) -> list[int]:
        """Each step kind's own: registered with @runs(kind)."""

    def value(self, key: str, batch: Batch, i: int) -> Any:
        reading = batch.readings[i]
        return self.evaluators[key](batch.metrics[i], batch.labels, batch.device, reading.ts, reading.seq)


RUNNERS: dict[str, type[StepRunner]] = {}


def runs(kind: str) -> Callable[[type[StepRunner]], type[StepRunner]]:
    """Register the runner of one step kind."""

    def register(cls: type[StepRunner]) -> type[StepRunner]:
        RUNNERS[kind] = cls
        return cls

    return register


class _SeqOrder:
    """Whether one device's seen seqs (`seqs`, the state's dict) are held in event-time order, and the event
    time of the last one: true as long as the device sends in order, which makes pruning cheap."""

    __slots__ = ("in_order", "last_ts", "seqs")

    def __init__(self, seqs: dict[int, int]):
        times = list(seqs.values())
        self.seqs = seqs
        self.in_order = all(a <= b for a, b in itertools.pairwise(times))
        self.last_ts = times[-1] if times else NEVER


@runs("dedupe")
class DedupeRunner(StepRunner):
    """dedupe.first_time, inline. Its pruning keeps the seqs seen within the horizon and rebuilds the whole
    dict to do so, which for a device with many readings in its horizon costs more than the rest of the
    step. Here seqs held in event-time order lose their oldest in place; seqs out of order are rebuilt once,
    sorted. Both keep exactly the seqs the reference keeps (their order in the dict is not state)."""

    def __init__(self, engine: "BatchEngine", step: CompiledStep):
        super().__init__(engine, step)
        self.orders: dict[str, _SeqOrder] = {}

    def run(self, batch: Batch, alive: list[int]) -> list[int]:
        assert self.step.spec.dedupe is not None
        horizon = self.step.spec.dedupe.horizon_ms
        seen = self.engine.state.dedupe.setdefault(self.name, {}).setdefault(batch.device, SeenSeqs())
        order = self.orders.get(batch.device)
        if order is None or order.seqs is not seen.seqs:
            order = self.orders[batch.device] = _SeqOrder(seen.seqs)
        seqs, in_order, last_ts = seen.seqs, order.in_order, order.last_ts
        readings, kept, prune_every = batch.readings, [], dedupe.PRUNE_EVERY
        for i in alive:
            reading = readings[i]
            seq, ts = reading.seq, reading.ts
            if seq in seqs:
                continue
            seqs[seq] = ts
            in_order = in_order and ts >= last_ts
            last_ts = ts
            if ts > seen.newest_ts:
                seen.newest_ts = ts
            if len(seqs) % prune_every == 0:
                cutoff = seen.newest_ts - horizon
                if in_order:
                    _drop_before(seqs, cutoff)
                else:
                    seqs = seen.seqs = dict(sorted(((s, t) for s, t in seqs.items() if t >= cutoff), key=_event_time))
                    in_order, last_ts = True, next(reversed(seqs.values()), NEVER)
            kept.append(i)
        order.seqs, order.in_order, order.last_ts = seqs, in_order, last_ts
        batch.count(self.name, "passed", len(kept))
        batch.count(self.name, "duplicate", len(alive) - len(kept))
        return kept


def _drop_before(seqs: dict[int, int], cutoff: int) -> None:
    """Remove the seqs seen before `cutoff` from `seqs`, which holds them in event-time order."""
    stale = []
    for seq, ts in seqs.items():
        if ts >= cutoff:
            break
        stale.append(seq)
    for seq in stale:
        del seqs[seq]


def _event_time(item: tuple[int, int]) -> int:
    return item[1]


@runs("filter")
class FilterRunner(StepRunner):
    def run(self, batch: Batch, alive: list[int]) -> list[int]:
        evaluate, expr = self.evaluators["condition"], self.step.expr("condition")
        metrics, labels, device, readings = batch.metrics, batch.labels, batch.device, batch.readings
        kept, dropped = [], 0
        for i in alive:
            reading = readings[i]
            try:
                value = evaluate(metrics[i], labels, device, reading.ts, reading.seq)
                if value is not True and value is not False:
                    as_bool(expr, value)
            except EvaluationError as exc:  # a filter that cannot judge a reading drops it, uncounted
                batch.error(self.name, i, exc)
                continue
            if value:
                kept.append(i)
            else:
                dropped += 1
        batch.count(self.name, "passed", len(kept))
        batch.count(self.name, "dropped", dropped)
        return kept


@runs("derive")
class DeriveRunner(StepRunner):
    """The step as one generated function over the batch (derivenative.py); readings on which the translated
    code does not give a finite double come back through `slow`, which is the per-reading evaluation."""

    def __init__(self, engine: "BatchEngine", step: CompiledStep):
        super().__init__(engine, step)
        spec = step.spec.derive
        assert spec is not None
        expressions = [step.expr(f"metrics.{key}") for key in spec.metrics]
        self.derived = [
            (key, library_evaluator(expr), expr) for key, expr in zip(spec.metrics, expressions, strict=True)
        ]
        self.derive = derive_function(spec, expressions, f"spec.steps[{step.index}].derive")

    def compile(self, step: CompiledStep) -> dict[str, Evaluator]:
        """None: the derive function evaluates the step's expressions (derivenative.py), and the slow path
        the library's evaluation of them."""
        return {}

    def run(self, batch: Batch, alive: list[int]) -> list[int]:
        self.derive(batch.metrics, alive, batch.labels, batch.device, batch.readings, self._slow_path(batch))
        batch.count(self.name, "derived", len(alive))
        return alive

    def _slow_path(self, batch: Batch) -> SlowPath:
        def slow(k: int, i: int, metrics: dict[str, float], value: Any) -> None:
            name, evaluate, expr = self.derived[k]
            try:
                if value is FAILED:
                    reading = batch.readings[i]
                    value = evaluate(metrics, batch.labels, batch.device, reading.ts, reading.seq)
                metrics[name] = as_number(expr, value)
            except EvaluationError as exc:  # this metric stays unset (or as it was); the others still count
                batch.error(self.name, i, exc)

        return slow


@runs("window")
class WindowRunner(StepRunner):
    def run(self, batch: Batch, alive: list[int]) -> list[int]:
        spec = self.step.spec.window
        assert spec is not None
        key = group_key(spec, batch.device, batch.labels)
        if key is None:
            batch.count(self.name, "ungrouped", len(alive))
            return alive
        operator = self.engine.windows[self.name]
        windows = operator.keys.setdefault(key, KeyWindows())
        operator.last_arrival[key] = batch.now_ms
        size, hop, wanted = spec.size_ms, spec.hop_ms, spec.metrics
        behind = spec.watermark_delay_ms + spec.allowed_lateness_ms
        next_end = min(windows.open) + size if windows.open else None  # the end of the first window to close
        late, newest = 0, windows.newest_ts
        joined: dict[int, list[int]] = {}  # window start -> the readings that joined it, not yet accumulated
        for i in alive:
            reading = batch.readings[i]
            ts = reading.ts
            missed = 0
            for start in (ts - ts % hop,) if size == hop else window_starts(ts, size, hop):
                if start + size <= windows.closed_until:
                    missed += 1
                    continue
                readings = joined.get(start)
                if readings is None:
                    joined[start] = [i]
                    if start not in windows.open:
                        windows.open[start] = {}
                        if next_end is None or start + size < next_end:
                            next_end = start + size
                else:
                    readings.append(i)
            if missed:
                late += 1
                batch.out.late.setdefault(self.name, []).append(Reading(reading.seq, ts, dict(batch.metrics[i])))
            # WindowOperator.close_passed. Only a newer event time moves the watermark: every window it had passed
            # closed then, and a window opened since ends after it (else the reading missed it), so a reading no
            # newer than the newest closes nothing.
            if ts <= newest:
                continue
            newest = windows.newest_ts = ts
            closed_until = ts - behind
            if closed_until > windows.closed_until:
                windows.closed_until = closed_until
            if next_end is not None and next_end <= windows.closed_until:
                _accumulate_joined(windows, joined, wanted, batch)  # what closes now must hold its readings
                joined = {}
                for aggregate in operator.close_passed(key):
                    batch.emitted.append((i, self.step.index, "aggregates", aggregate))
                next_end = min(windows.open) + size if windows.open else None
        _accumulate_joined(windows, joined, wanted, batch)
        batch.count(self.name, "late", late)
        batch.count(self.name, "windowed", len(alive) - late)
        return alive


def _accumulate_joined(windows: KeyWindows, joined: dict[int, list[int]], wanted: list[str], batch: Batch) -> None:
    """Add the readings that joined each window (`joined`: start -> batch positions, in order) to its
    accumulators, a metric at a time: what Accumulator.add does per reading and metric, done over the column
    of one metric's values. Every accumulator sees its values in the same order as one reading at a time would
    add them, so sums, minima, maxima and `last` are identical."""
    for start, positions in joined.items():
        accumulators = windows.open[start]
        rows = [batch.metrics[i] for i in positions]
        newest: tuple[int, int, int] | None = None  # the newest of `positions`, found once for every metric
        for name in wanted or dict.fromkeys(name for row in rows for name in row):
            try:  # every reading carries it, as a rule: one lookup per value
                values = [row[name] for row in rows]
            except KeyError:
                values = [row[name] for row in rows if name in row]
            if not values:  # no accumulator for a metric no reading carries (Accumulator.add was never called)
                continue
            if len(values) == len(positions):
                if newest is None:
                    newest = _newest(batch.readings, positions)
                _accumulate(accumulators, name, values, newest)
            else:
                carrying = [i for i, row in zip(positions, rows, strict=True) if name in row]
                _accumulate(accumulators, name, values, _newest(batch.readings, carrying))


def _newest(readings: list[Reading], positions: list[int]) -> tuple[int, int, int]:
    """(ts, seq, index in `positions`) of the last of those readings whose (ts, seq) is the greatest: the one
    whose value Accumulator.add, given them in order, would keep as `last` (a later equal key wins)."""
    first = readings[positions[0]]
    best_ts, best_seq, best = first.ts, first.seq, 0
    for index, i in enumerate(positions):
        reading = readings[i]
        ts = reading.ts
        if ts > best_ts or (ts == best_ts and reading.seq >= best_seq):
            best_ts, best_seq, best = ts, reading.seq, index
    return best_ts, best_seq, best


def _accumulate(
    accumulators: dict[str, Accumulator],
    name: str,
    values: list[float],
    newest: tuple[int, int, int],
) -> None:
    """Add `values` (metric `name` of the readings that carry it, in order; `newest` among them as _newest
    gives it) to the metric's accumulator, created on the first value as Accumulator.add would be.

    min() and max() keep their first argument unless a later one is strictly less (greater), which is what
    comparing each value in turn does, NaN included; the sum is added value by value, in order, as it was."""
    acc = accumulators.get(name)
    if acc is None:
        acc = accumulators[name] = Accumulator()
    acc.count += len(values)
    acc.min = min(acc.min, *values)
    acc.max = max(acc.max, *values)
    total = acc.sum
    for value in values:
        total += value
    acc.sum = total
    acc.values.extend(values)
    ts, seq, index = newest
    if ts > acc.last_ts or (ts == acc.last_ts and seq >= acc.last_seq):
        acc.last, acc.last_ts, acc.last_seq = values[index], ts, seq


@runs("alert")
class AlertRunner(StepRunner):
    def run(self, batch: Batch, alive: list[int]) -> list[int]:
        spec = self.step.spec.alert
        assert spec is not None
        state: AlertState | None = self.engine.state.alerts.get(self.name, {}).get(batch.device)
        metrics, labels, device, readings = batch.metrics, batch.labels, batch.device, batch.readings
        holds, holds_expr = self.evaluators["condition"], self.step.expr("condition")
        clears = self.evaluators.get("clear")
        for i in alive:
            reading = readings[i]
            ts = reading.ts
            try:
                condition = holds(metrics[i], labels, device, ts, reading.seq)
                if condition.__class__ is not bool:
                    as_bool(holds_expr, condition)  # raises
                if clears is None:
                    clear = not condition
                else:
                    clear = clears(metrics[i], labels, device, ts, reading.seq)
                    if clear.__class__ is not bool:
                        as_bool(self.step.expr("clear"), clear)  # raises
            except EvaluationError as exc:
                batch.error(self.name, i, exc)
                continue
            if state is None:  # created by the first reading that reaches the rule, as in the reference
                state = self.engine.state.alerts.setdefault(self.name, {}).setdefault(batch.device, AlertState())
            if not condition and ts >= state.last_ts and state.phase == Phase.OK:  # step_alert's usual case
                state.last_ts = ts
                continue
            transition = alerts.step_alert(spec, state, ts, condition, clear)
            if transition is not None:
                batch.count(self.name, transition.state, 1)
                event = AlertEvent(
                    fleet=self.engine.pipeline.fleet,
                    pipeline=self.engine.pipeline.pipeline,
                    rule=self.name,
                    device=batch.device,
                    state=transition.state,
                    severity=spec.severity,
                    ts_ms=transition.ts_ms,
                    values=dict(batch.metrics[i]),
                    message=spec.message,
                )
                batch.emitted.append((i, self.step.index, "alerts", event))
        return alive


@runs("command")
class CommandRunner(StepRunner):
    def run(self, batch: Batch, alive: list[int]) -> list[int]:
        metrics, labels, device, readings = batch.metrics, batch.labels, batch.device, batch.readings
        holds, holds_expr = self.evaluators["condition"], self.step.expr("condition")
        for i in alive:
            reading = readings[i]
            try:
                condition = holds(metrics[i], labels, device, reading.ts, reading.seq)
                if condition.__class__ is not bool:
                    as_bool(holds_expr, condition)  # raises
                if condition:
                    self.triggered(batch, i)
            except EvaluationError as exc:
                batch.error(self.name, i, exc)
        return alive

    def triggered(self, batch: Batch, i: int) -> None:
        """Engine._command after its condition held."""
        spec = self.step.spec.command
        assert spec is not None
        target = self.value("target", batch, i)
        if not isinstance(target, str) or not identifiers.DEVICE_ID.fullmatch(target):
            raise EvaluationError("bad_target", f"{self.name}: target {target!r} is not a device id")
        ts = batch.readings[i].ts
        last_sent = self.engine.state.commands.setdefault(self.name, {})
        decision = commands.decide(spec, last_sent, commands.cooldown_key(batch.device, target), ts, batch.now_ms)
        batch.count(self.name, f"command_{decision}", 1)
        if decision != "send":
            return
        params: dict[str, Any] = dict(spec.params)
        for name in spec.computed_params:
            params[name] = plain(self.value(f"computedParams.{name}", batch, i))
        pipeline = self.engine.pipeline.pipeline
        command = Command(
            id=commands.command_id(pipeline, self.name, batch.device, target, ts),
            fleet=self.engine.pipeline.fleet,
            device=target,
            name=spec.command,
            params=params,
            created_ms=ts,
            ttl_ms=spec.ttl_ms,
            source=f"pipeline/{pipeline}/{self.name}",
        )
        batch.emitted.append((i, self.step.index, "commands", command))


class BatchEngine(Engine):
    """`Engine`'s interface and state, with each step run over a whole batch (see the module docstring)."""

    def __init__(self, pipeline: CompiledPipeline, state: EngineState | None = None, now_ms: int = 0):
        super().__init__(pipeline, state, now_ms)
        self.runners = [RUNNERS[step.kind](self, step) for step in pipeline.steps]

    def process(self, batch: ReadingBatch, now_ms: int) -> Outputs:
        return self.process_timed(batch, now_ms, None)

    def process_timed(self, batch: ReadingBatch, now_ms: int, step_seconds: list[float] | None) -> Outputs:
        """`process`; with `step_seconds` (one per step), each step's time on this batch is added there."""
        if not self.runners:
            return super().process(batch, now_ms)
        work = Batch(batch, self.pipeline.labels_of(batch.device), now_ms)
        alive = list(range(len(batch.readings)))
        for index, runner in enumerate(self.runners):
            if not alive:
                break
            if step_seconds is None:
                alive = runner.run(work, alive)
            else:
                started = time.perf_counter()
                alive = runner.run(work, alive)
                step_seconds[index] += time.perf_counter() - started
        return _finished(work, batch, alive)


def _finished(work: Batch, batch: ReadingBatch, alive: list[int]) -> Outputs:
    out = work.out
    if alive:
        readings = work.processed(alive)
        out.readings.append(
            ReadingBatch(fleet=batch.fleet, device=batch.device, readings=readings, received_ms=batch.received_ms)
        )
    if len(work.emitted) > 1:
        work.emitted.sort(key=lambda tagged: (tagged[0], tagged[1]))  # stable: one step's outputs keep their order
    lists: dict[str, list[Any]] = {"aggregates": out.aggregates, "alerts": out.alerts, "commands": out.commands}
    for _, _, kind, item in work.emitted:
        lists[kind].append(item)
    return out
