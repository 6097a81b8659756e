"""Logging evaluation errors without a line per reading.

A pipeline whose expression fails on every reading of a busy fleet would otherwise write thousands of lines
a second. So the first error of each (step, reason) is logged at once, with an example (device, sequence
number, the library's message); after that one line every `interval` seconds says how many happened since.
The counter `fleetflow_processor_evaluation_errors_total` has every one of them."""

from collections import Counter

import structlog

log = structlog.get_logger(__name__)

SUMMARY_INTERVAL = 60.0


class EvaluationErrorLog:
    def __init__(self, pipeline: str, interval: float = SUMMARY_INTERVAL):
        self.pipeline, self.interval = pipeline, interval
        self.seen: set[tuple[str, str]] = set()
        self.pending: Counter[tuple[str, str]] = Counter()
        self.next_summary = 0.0

    def record(self, errors: Counter[tuple[str, str]], examples: dict[tuple[str, str], str], now: float) -> None:
        """Take one batch's errors (step, reason) -> count; `now` is the clock in seconds."""
        for (step, reason), count in errors.items():
            if (step, reason) not in self.seen:
                self.seen.add((step, reason))
                log.warning("expression evaluation failed", pipeline=self.pipeline, step=step, reason=reason,
                            example=examples.get((step, reason), ""),
                            further=f"counted, and summarised in the log every {self.interval:g}s")  # fmt: skip
                count -= 1
            if count:
                if not self.pending:
                    self.next_summary = max(self.next_summary, now + self.interval)
                self.pending[(step, reason)] += count

    def flush(self, now: float, final: bool = False) -> None:
        """Log the summary once it is due (or `final`, when the processor stops)."""
        if not self.pending or (now < self.next_summary and not final):
            return
        log.warning("expression evaluation errors since the last report", pipeline=self.pipeline,
                    errors={f"{step}/{reason}": n for (step, reason), n in sorted(self.pending.items())})  # fmt: skip
        self.pending.clear()
        self.next_summary = now + self.interval
