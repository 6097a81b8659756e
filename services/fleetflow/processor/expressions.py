"""CEL expressions: compiled once when a pipeline loads, checked for names and types, evaluated per reading.

`common-expression-language` parses at compile time but resolves names and types only when evaluating, so
an unknown variable or function, or `metrics.temp_c + labels.site`, would surface on the hot path, once per
reading. `compile_expression` refuses the names no reading will ever provide, then type-checks the tree
(celtypes.py, which also writes integer literals used with doubles as doubles)."""

import re
from dataclasses import dataclass
from typing import Any

import cel

from fleetflow.processor import celsyntax, celtypes
from fleetflow.processor.celtypes import ANYTHING, Wanted

VARIABLES = ("device", "ts", "seq", "metrics", "labels")
# The functions the library provides (operators appear as `_x_`, `@x` or `!_` and are always allowed).
FUNCTIONS = frozenset(
    {
        "size",
        "has",
        "matches",
        "startsWith",
        "endsWith",
        "contains",
        "int",
        "uint",
        "double",
        "string",
        "bytes",
        "timestamp",
        "duration",
        "type",
        "dyn",
        "exists",
        "all",
        "exists_one",
        "map",
        "filter",
        "getFullYear",
        "getMonth",
        "getDate",
        "getDayOfMonth",
        "getDayOfWeek",
        "getDayOfYear",
        "getHours",
        "getMinutes",
        "getSeconds",
        "getMilliseconds",
    }
)
_COMPREHENSION = re.compile(r"\.(?:all|exists|exists_one|map|filter)\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")
_PARSE_POSITION = re.compile(r"<input>:(\d+):(\d+): (.*)")
# The parser lists every token it would accept; after an operator that list says no more than this.
_EXPECTING = re.compile(r"expecting \{[^}]*IDENTIFIER\}")


@dataclass(frozen=True)
class ExpressionError:
    """One bad expression: where it sits in the spec, its text, the 1-based line:column, and why."""

    path: str
    expression: str
    line: int
    column: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.expression!r} at {self.line}:{self.column}: {self.reason}"


# What can still fail per reading once the types check: data (a missing metric or label, a zero divisor, an
# int overflow) or a `dyn(...)` value of the wrong type. These short names label the error counter.
_REASONS: dict[type[Exception], str] = {
    ZeroDivisionError: "division_by_zero",
    OverflowError: "overflow",
    TypeError: "type_mismatch",
}
RUNTIME_REASONS = ("missing_field", *_REASONS.values(), "evaluation_error")


class EvaluationError(Exception):
    """An expression failed on one reading (e.g. a metric it reads is missing); `reason` labels a counter."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        super().__init__(detail)


@dataclass(frozen=True)
class Expression:
    path: str
    source: str
    program: Any
    # What it reads of a reading. Converting a float or a string into CEL costs 6-13 µs, so a context holds
    # only what an expression needs: these variables and, when it only names them, these metrics and labels.
    needs: tuple[str, ...] = VARIABLES
    metric_fields: tuple[str, ...] | None = None
    label_fields: tuple[str, ...] | None = None
    rewritten: str | None = None  # the text the program runs, when the type check wrote literals as doubles

    @property
    def text(self) -> str:
        return self.rewritten or self.source

    @property
    def scope_key(self) -> tuple[object, ...]:
        return (self.needs, self.metric_fields, self.label_fields)

    def evaluate(self, context: Any) -> Any:
        """The expression's value for one reading's `cel.Context`; EvaluationError if it cannot be computed."""
        try:
            return self.program.execute(context)
        except KeyError as exc:
            raise EvaluationError("missing_field", f"{self.path}: {self.source!r}: no field {exc}") from None
        except (TypeError, ValueError, RuntimeError, ZeroDivisionError, OverflowError) as exc:
            reason = _REASONS.get(type(exc), "evaluation_error")
            raise EvaluationError(reason, f"{self.path}: {self.source!r}: {exc}") from None


def compile_expression(path: str, source: str, wanted: Wanted = ANYTHING) -> Expression | ExpressionError:
    """Compile `source`, which must give what `wanted` says; an ExpressionError says where and why when it
    cannot run on a reading."""
    try:
        program = cel.compile(source)
    except (ValueError, RuntimeError) as exc:
        return _parse_error(path, source, str(exc))
    unknown = _unknown_name(path, source, program)
    if unknown is not None:
        return unknown
    try:
        checked = celtypes.check(celsyntax.parse(source), source, wanted)
    except (celsyntax.SyntaxProblem, celtypes.TypeProblem) as exc:
        return ExpressionError(path, source, *_line_column(source, exc.offset), str(exc))
    rewritten = checked.rewrite(source) if checked.doubles else None
    if rewritten is not None:
        program = cel.compile(rewritten)
    needs = tuple(v for v in VARIABLES if v in program.variables())
    metric_fields, label_fields = fields_named(source, "metrics"), fields_named(source, "labels")
    return Expression(path, source, program, needs, metric_fields, label_fields, rewritten)


def _unknown_name(path: str, source: str, program: Any) -> ExpressionError | None:
    """An error for the first variable or function no reading provides, else None."""
    bound = set(_COMPREHENSION.findall(source))
    for name in program.variables():
        if name not in VARIABLES and name not in bound:
            line, column = _position_of(source, name)
            return ExpressionError(
                path,
                source,
                line,
                column,
                f"unknown variable {name!r}; a reading provides {', '.join(VARIABLES)} (a metric is metrics.{name})",
            )
    for name in program.functions():
        if name[0].isalpha() and name not in FUNCTIONS:
            line, column = _position_of(source, name)
            return ExpressionError(
                path, source, line, column, f"unknown function {name!r}; available: {', '.join(sorted(FUNCTIONS))}"
            )
    return None


def fields_named(source: str, variable: str) -> tuple[str, ...] | None:
    """The fields of map `variable` the expression names (`m.x`, `m['x']`), or None if it uses the map in
    any other way (iterates it, indexes it by a variable, passes it to a function) and needs all of it."""
    uses = len(re.findall(rf"(?<![\w.]){variable}\b", source))
    named = re.findall(
        rf"(?<![\w.]){variable}(?:\.([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()|\[\s*(?:'([^']*)'|\"([^\"]*)\")\s*\])", source
    )
    if len(named) != uses:
        return None
    return tuple(sorted({"".join(parts) for parts in named}))


def _parse_error(path: str, source: str, text: str) -> ExpressionError:
    """The first `<input>:line:col: reason` of the library's message, without its echo of the source."""
    match = _PARSE_POSITION.search(text)
    if match is None:
        return ExpressionError(path, source, 1, 1, text.splitlines()[0] if text else "does not parse")
    reason = _EXPECTING.sub("expecting an operand (a number, string, name, '(', '[' or '{')", match.group(3).strip())
    return ExpressionError(path, source, int(match.group(1)), int(match.group(2)), reason)


def _position_of(source: str, name: str) -> tuple[int, int]:
    match = re.search(rf"(?<![A-Za-z0-9_.]){re.escape(name)}\b", source) or re.search(re.escape(name), source)
    return _line_column(source, match.start() if match else 0)


def _line_column(source: str, offset: int) -> tuple[int, int]:
    """The 1-based line and column of `offset` in `source`."""
    line = source.count("\n", 0, offset) + 1
    return line, offset - (source.rfind("\n", 0, offset) + 1) + 1
