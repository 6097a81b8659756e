"""CEL compiled to one native Python function per expression, with the library as the fallback.

Building a `cel.Context` per reading and step was a third of the engine's time (docs/performance.md). The
expressions pipelines are made of (metric reads, `has()`, double arithmetic, comparisons, `&&`, `||`, `!`,
`?:`) translate one to one into Python expressions that give the same value whenever CEL gives one. Where
they would not, the Python code raises instead: a missing key, a metric that is not a double (CEL would not
mix it with one), a division by zero (CEL gives an infinity). Any exception sends that one reading to the
library's program, so results and errors are exactly the library's. An expression with anything else (int
arithmetic, which CEL checks for overflow; macros; conversions; `dyn`) runs in the library for every reading.

Every value from the expression's text (names, literals) reaches the generated code as a bound constant,
never as source text, so nothing in a pipeline can inject code."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fleetflow.processor import celsyntax
from fleetflow.processor.celsyntax import Binary, Call, Conditional, Ident, Literal, Node, Select, Unary
from fleetflow.processor.engine import ReadingScope
from fleetflow.processor.expressions import Expression
from fleetflow.runtime.codec import Reading

# metrics, labels, device, ts, seq -> the expression's value (or EvaluationError, as Expression.evaluate)
Evaluator = Callable[[dict[str, float], dict[str, str], str, int, int], Any]

_EXACT_DOUBLE_INT = 2**53  # an int this small converts to a double exactly, so mixed comparisons agree
_INT64 = 2**63
_COMPARISONS = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "==": "==", "!=": "!="}
_DOUBLE_ARITHMETIC = ("+", "-", "*", "/")
_STRING_METHODS = {"startsWith": "startswith", "endsWith": "endswith"}
_VARIABLES = {"device": ("string", "d"), "ts": ("int", "t"), "seq": ("int", "s")}


class Unsupported(Exception):
    """The expression uses something the translation does not cover; the library evaluates it."""


@dataclass(frozen=True)
class Code:
    type: str  # double, int, string, bool
    text: str  # a parenthesised Python expression over m, l, d, t, s and bound constants


class _Translator:
    def __init__(self, prefix: str = "_c") -> None:
        self.prefix = prefix  # constants are named prefix0, prefix1, ...: one function can hold several expressions
        self.constants: dict[str, object] = {}
        self.variables: set[str] = set()  # which of d, t, s the code reads

    def constant(self, value: object) -> str:
        name = f"{self.prefix}{len(self.constants)}"
        self.constants[name] = value
        return name

    def code(self, node: Node) -> Code:
        if isinstance(node, Literal):
            return self.literal(node)
        if isinstance(node, Ident) and node.name in _VARIABLES:
            kind, variable = _VARIABLES[node.name]
            self.variables.add(variable)
            return Code(kind, variable)
        if isinstance(node, Select) and isinstance(node.operand, Ident):
            return self.field(node.operand.name, node.name)
        if isinstance(node, Call):
            return self.call(node)
        if isinstance(node, Unary):
            return self.unary(node)
        if isinstance(node, Binary):
            return self.binary(node)
        if isinstance(node, Conditional):
            return self.conditional(node)
        raise Unsupported(type(node).__name__)

    def literal(self, node: Literal) -> Code:
        if node.kind == "double":
            return Code("double", self.constant(float(node.text)))
        if node.kind == "int" and node.text.isdigit() and int(node.text) < _INT64:
            return Code("int", self.constant(int(node.text)))
        if node.kind == "bool":
            return Code("bool", "True" if node.text == "true" else "False")
        quote = node.text[:1]
        if node.kind == "string" and quote in "'\"" and node.text[1:2] != quote and "\\" not in node.text:
            return Code("string", self.constant(node.text[1:-1]))
        raise Unsupported(node.text)

    def field(self, variable: str, name: str) -> Code:
        key = self.constant(name)
        if variable == "metrics":  # only a double is one; anything else goes to the library
            return Code("double", f"(_v if (_v := m[{key}]).__class__ is _float else _not_a_double())")
        if variable == "labels":
            return Code("string", f"l[{key}]")
        raise Unsupported(variable)

    def call(self, node: Call) -> Code:
        if node.function == "has" and node.target is None and len(node.args) == 1:
            [arg] = node.args
            if isinstance(arg, Select) and isinstance(arg.operand, Ident) and arg.operand.name in ("metrics", "labels"):
                return Code("bool", f"({self.constant(arg.name)} in {arg.operand.name[0]})")
        if node.function in _STRING_METHODS and node.target is not None and len(node.args) == 1:
            target, argument = self.code(node.target), self.code(node.args[0])
            if target.type == argument.type == "string":
                return Code("bool", f"{target.text}.{_STRING_METHODS[node.function]}({argument.text})")
        raise Unsupported(node.function)

    def unary(self, node: Unary) -> Code:
        operand = self.code(node.operand)
        if node.op == "!" and operand.type == "bool":
            return Code("bool", f"(not {operand.text})")
        if node.op == "-" and operand.type == "double":
            return Code("double", f"(-{operand.text})")
        raise Unsupported(node.op)

    def binary(self, node: Binary) -> Code:
        left, right = self.code(node.left), self.code(node.right)
        if node.op in ("&&", "||") and left.type == right.type == "bool":
            # Python's and/or skip the right side exactly where CEL's result no longer depends on it; an
            # error on the left raises here, and the library then applies CEL's error-absorbing rules.
            return Code("bool", f"({left.text} {'and' if node.op == '&&' else 'or'} {right.text})")
        if node.op in _DOUBLE_ARITHMETIC and left.type == right.type == "double":
            return Code("double", f"({left.text} {node.op} {right.text})")
        if node.op in _COMPARISONS and self.comparable(node, left, right):
            return Code("bool", f"({left.text} {_COMPARISONS[node.op]} {right.text})")
        raise Unsupported(node.op)

    def comparable(self, node: Binary, left: Code, right: Code) -> bool:
        if left.type == right.type:
            return left.type in ("double", "int", "string") or node.op in ("==", "!=")
        if {left.type, right.type} == {"double", "int"}:  # only a small int literal converts exactly
            side = node.left if left.type == "int" else node.right
            return isinstance(side, Literal) and int(side.text) <= _EXACT_DOUBLE_INT
        return False

    def conditional(self, node: Conditional) -> Code:
        condition, then, otherwise = self.code(node.condition), self.code(node.then), self.code(node.otherwise)
        if condition.type != "bool" or then.type != otherwise.type:
            raise Unsupported("?:")
        return Code(then.type, f"({then.text} if {condition.text} else {otherwise.text})")


class _NotADouble(Exception):
    pass


def _not_a_double() -> float:
    raise _NotADouble


NATIVE_NAMES: dict[str, object] = {"_float": float, "_not_a_double": _not_a_double}  # what translated code calls


def library_evaluator(expr: Expression) -> Evaluator:
    """The library's evaluation of `expr` for one reading, as the reference engine does it."""

    def evaluate(m: dict[str, float], l: dict[str, str], d: str, t: int, s: int) -> Any:  # noqa: E741
        return ReadingScope(d, l, Reading(s, t, m)).evaluate(expr)

    return evaluate


@dataclass(frozen=True)
class Translation:
    """An expression as Python: `text` over m, l, d, t, s and the `constants` it names; `variables` says which
    of d, t, s it reads. Run it in a namespace holding the constants and NATIVE_NAMES."""

    text: str
    constants: dict[str, object]
    variables: frozenset[str]


def translation(expr: Expression, prefix: str = "_c") -> Translation | None:
    """The Python code of `expr`, its constants named `prefix`0, `prefix`1, ...; None when the translation
    does not cover it."""
    translator = _Translator(prefix)
    try:
        code = translator.code(celsyntax.parse(expr.text))
    except (Unsupported, celsyntax.SyntaxProblem):
        return None
    return Translation(code.text, translator.constants, frozenset(translator.variables))


def translates(expr: Expression) -> bool:
    """Whether `expr` runs natively (else every reading goes through the library)."""
    return translation(expr) is not None


def native_evaluator(expr: Expression) -> Evaluator:
    """A Python function with the library's results for `expr`: native where the translation covers the
    expression and the reading, the library otherwise."""
    fallback = library_evaluator(expr)
    translated = translation(expr)
    if translated is None:
        return fallback
    namespace: dict[str, Any] = {**translated.constants, **NATIVE_NAMES, "_fallback": fallback}
    source = (
        "def native(m, l, d, t, s):\n"
        "    try:\n"
        f"        return {translated.text}\n"
        "    except Exception:\n"
        "        return _fallback(m, l, d, t, s)\n"
    )
    exec(compile(source, f"<cel {expr.path}>", "exec"), namespace)  # constants only, see the module docstring
    native: Evaluator = namespace["native"]
    return native
