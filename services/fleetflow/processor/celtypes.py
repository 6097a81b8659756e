"""The type check of a pipeline's CEL, at load: an expression that can never evaluate is refused there.

CEL has no implicit conversion between int and double, and the library checks types only per reading, so
`metrics.temp_c * 9 / 5 + 32` used to compile and then fail on every reading. Two rules fix that:

- Integer literals are untyped numbers until their use decides. Combined in arithmetic with a double (every
  metric is one), they are written as doubles: `metrics.temp_c * 9 / 5 + 32` runs as `* 9.0 / 5.0 + 32.0`,
  and `9 / 5 * metrics.temp_c` as `9.0 / 5.0 * ...` (1.8, never integer division). A derived metric is a
  double, so a derive of literals alone (`9 / 5`) is one too. Elsewhere they stay ints, as CEL has them.
- Everything else is checked as CEL's own checker would: operators and functions need operands of the types
  they are defined for, a condition must be a bool, a derived metric a number, a target a string. Variables
  that are ints (`ts`, `seq`, `size(...)`) do not silently become doubles; the message says `double(ts)`.

`dyn(x)` opts a value out of the check, as in CEL."""

from dataclasses import dataclass, field

from fleetflow.processor.celsyntax import (
    Binary,
    Call,
    Conditional,
    Ident,
    Index,
    ListLiteral,
    Literal,
    MapLiteral,
    Node,
    Select,
    Unary,
)


@dataclass(frozen=True)
class CelType:
    name: str
    params: tuple["CelType", ...] = ()

    def __str__(self) -> str:
        if self.name == "number":
            return "int"
        if self.name == "list":
            return f"list({self.params[0]})"
        if self.name == "map":
            return f"map({self.params[0]}, {self.params[1]})"
        return self.name


INT, UINT, DOUBLE, STRING, BYTES, BOOL = (CelType(n) for n in ("int", "uint", "double", "string", "bytes", "bool"))
NULL, TIMESTAMP, DURATION, TYPE, DYN = (CelType(n) for n in ("null", "timestamp", "duration", "type", "dyn"))
NUMBER = CelType("number")  # an integer literal (or arithmetic of them) whose use has not decided int or double


def list_of(element: CelType) -> CelType:
    return CelType("list", (element,))


def map_of(key: CelType, value: CelType) -> CelType:
    return CelType("map", (key, value))


# What a reading provides (see engine.ReadingScope); metrics are decoded as floats, so they are doubles.
READING = {
    "device": STRING,
    "ts": INT,
    "seq": INT,
    "metrics": map_of(STRING, DOUBLE),
    "labels": map_of(STRING, STRING),
}
NUMERIC = frozenset({INT, UINT, DOUBLE, NUMBER})
_ARITHMETIC = ("+", "-", "*", "/", "%")
_ORDERED = frozenset({INT, UINT, DOUBLE, NUMBER, STRING, BYTES, BOOL, TIMESTAMP, DURATION})
_TIME_PARTS = frozenset(
    {"getFullYear", "getMonth", "getDate", "getDayOfMonth", "getDayOfWeek", "getDayOfYear"}
    | {"getHours", "getMinutes", "getSeconds", "getMilliseconds"}
)
_STRING_TESTS = frozenset({"startsWith", "endsWith", "contains", "matches"})
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
# As `common-expression-language` 0.10 provides them: it has no timestamp(int), int(timestamp),
# time zone arguments or global matches(), so those are refused here rather than on every reading.
_CONVERSIONS = {
    "int": (INT, {INT, UINT, DOUBLE, NUMBER, STRING}),
    "uint": (UINT, {INT, UINT, DOUBLE, NUMBER, STRING}),
    "double": (DOUBLE, {INT, UINT, DOUBLE, NUMBER, STRING}),
    "string": (STRING, {INT, UINT, DOUBLE, NUMBER, STRING, BYTES, BOOL, TIMESTAMP, DURATION}),
    "bytes": (BYTES, {STRING, BYTES}),
    "timestamp": (TIMESTAMP, {STRING}),
    "duration": (DURATION, {STRING, DURATION}),
}


class TypeProblem(Exception):
    """Why an expression cannot evaluate, and the offset in its source where that shows."""

    def __init__(self, offset: int, reason: str):
        self.offset = offset
        super().__init__(reason)


@dataclass(frozen=True)
class Wanted:
    """What a field needs its expression to give, in words for the message. `numbers_as_doubles`: an
    untyped integer result becomes a double (a derived metric is one)."""

    types: frozenset[CelType]
    words: str
    numbers_as_doubles: bool = False


A_BOOL = Wanted(frozenset({BOOL}), "true or false")
A_METRIC = Wanted(frozenset({INT, UINT, DOUBLE}), "a number", numbers_as_doubles=True)
A_STRING = Wanted(frozenset({STRING}), "a string (a device id)")
ANYTHING = Wanted(frozenset(), "any value")


@dataclass
class Checked:
    type: CelType
    doubles: list[Literal] = field(default_factory=list)  # integer literals to write as doubles

    def rewrite(self, source: str) -> str:
        """`source` with those literals written as doubles (`9` -> `9.0`, `0x10` -> `16.0`)."""
        for literal in sorted(self.doubles, key=lambda n: n.start, reverse=True):
            value = int(literal.text, 16) if literal.text[:2].lower() == "0x" else int(literal.text)
            source = source[: literal.start] + f"{float(value)!r}" + source[literal.end :]
        return source


def check(tree: Node, source: str, wanted: Wanted) -> Checked:
    """The type of `tree`; TypeProblem if it cannot evaluate or does not give what `wanted` says."""
    checker = _Checker(source)
    found = checker.type_of(tree)
    if found == NUMBER:
        found = checker.commit(tree, DOUBLE if wanted.numbers_as_doubles else INT)
    if wanted.types and found != DYN and found not in wanted.types:
        raise TypeProblem(tree.start, f"gives {found}, but this field needs {wanted.words}")
    return Checked(found, checker.doubles)


class _Checker:
    def __init__(self, source: str):
        self.source = source
        self.scope: dict[str, CelType] = dict(READING)
        self.doubles: list[Literal] = []

    def text(self, node: Node) -> str:
        return self.source[node.start : node.end]

    def described(self, node: Node, found: CelType) -> str:
        if found == NULL:
            return f"{self.text(node)} is null"
        return f"{self.text(node)} is {'an' if found in (INT, NUMBER) else 'a'} {found}"

    def commit(self, node: Node, to: CelType) -> CelType:
        """Decide an untyped integer expression: as double, its literals are rewritten."""
        if to == DOUBLE:
            self.doubles.extend(_int_literals(node))
        return to

    def type_of(self, node: Node) -> CelType:
        if isinstance(node, Literal):
            return NUMBER if node.kind == "int" else CelType(node.kind)
        if isinstance(node, Ident):
            return self.scope.get(node.name, DYN)  # unknown names were refused before the type check
        if isinstance(node, Select):
            return self.select(node)
        if isinstance(node, Index):
            return self.index(node)
        if isinstance(node, Unary):
            return self.unary(node)
        if isinstance(node, Binary):
            return self.binary(node)
        if isinstance(node, Conditional):
            return self.conditional(node)
        if isinstance(node, ListLiteral):
            return list_of(self.common([self.settled(item) for item in node.items]))
        if isinstance(node, MapLiteral):
            keys = [self.settled(key) for key, _ in node.entries]
            return map_of(self.common(keys), self.common([self.settled(value) for _, value in node.entries]))
        assert isinstance(node, Call)
        return self.call(node)

    def settled(self, node: Node) -> CelType:
        """The type of `node` where nothing around it decides an untyped integer: an int, as in CEL."""
        found = self.type_of(node)
        return INT if found == NUMBER else found

    @staticmethod
    def common(types: list[CelType]) -> CelType:
        return types[0] if types and all(t == types[0] for t in types) else DYN

    def select(self, node: Select) -> CelType:
        operand = self.type_of(node.operand)
        if operand.name == "map" and operand.params[0] in (STRING, DYN):
            return operand.params[1]
        if operand == DYN:
            return DYN
        raise TypeProblem(node.start, f"{self.described(node.operand, operand)}: it has no field {node.name!r}")

    def index(self, node: Index) -> CelType:
        operand, index = self.type_of(node.operand), self.settled(node.index)
        if operand == DYN:
            return DYN
        if operand.name == "list" and index in (INT, UINT, DYN):
            return operand.params[0]
        if operand.name == "map" and index in (operand.params[0], DYN):
            return operand.params[1]
        raise TypeProblem(node.index.start, f"{self.described(node.operand, operand)}: it cannot be indexed by {index}")

    def unary(self, node: Unary) -> CelType:
        operand = self.type_of(node.operand)
        accepted = {BOOL, DYN} if node.op == "!" else {INT, DOUBLE, NUMBER, DURATION, DYN}
        if operand not in accepted:
            needs = "true or false" if node.op == "!" else "a number"
            raise TypeProblem(node.start, f"{node.op!r} needs {needs}, but {self.described(node.operand, operand)}")
        return operand

    def binary(self, node: Binary) -> CelType:
        if node.op in ("&&", "||"):
            for side in (node.left, node.right):
                found = self.type_of(side)
                if found not in (BOOL, DYN):
                    raise TypeProblem(side.start, f"{node.op!r} needs true or false on both sides, but "
                                                  f"{self.described(side, found)}")  # fmt: skip
            return BOOL
        left, right = self.type_of(node.left), self.type_of(node.right)
        if node.op in _ARITHMETIC:
            return self.arithmetic(node, left, right)
        if node.op == "in":
            return self.membership(node, left, right)
        return self.comparison(node, left, right)

    def arithmetic(self, node: Binary, left: CelType, right: CelType) -> CelType:
        if NUMBER in (left, right):
            other, number_side = (right, node.left) if left == NUMBER else (left, node.right)
            if other == NUMBER:
                return NUMBER
            if other in (DOUBLE, INT) and not (node.op == "%" and other == DOUBLE):
                self.commit(number_side, other)
                return other
        if DYN in (left, right):
            return DYN
        result = _arithmetic_result(node.op, left, right)
        if result is None:
            raise TypeProblem(node.op_start, self.arithmetic_problem(node, left, right))
        return result

    def arithmetic_problem(self, node: Binary, left: CelType, right: CelType) -> str:
        both = f"{self.described(node.left, left)} and {self.described(node.right, right)}"
        if node.op == "%" and DOUBLE in (left, right):
            return f"'%' needs ints, but {both}; a double has no remainder in CEL"
        if {left, right} <= NUMERIC:
            converted = node.left if right == DOUBLE else node.right
            fix = f"write double({self.text(converted)})" if DOUBLE in (left, right) else "convert with int() or uint()"
            return f"{node.op!r} cannot mix {left} and {right} ({both}); CEL does not convert numbers: {fix}"
        return f"{node.op!r} is not defined for {left} and {right}: {both}"

    def membership(self, node: Binary, left: CelType, right: CelType) -> CelType:
        if right == DYN or left == DYN:
            return BOOL
        if right.name in ("list", "map"):
            element = right.params[0]
            if element == DYN or left == element or {left, element} <= NUMERIC:
                return BOOL
        raise TypeProblem(node.op_start, f"'in' needs a list or map of {left} on its right, but "
                                         f"{self.described(node.right, right)}")  # fmt: skip

    def comparison(self, node: Binary, left: CelType, right: CelType) -> CelType:
        # CEL compares int, uint and double with each other by value; other types only with their own.
        comparable = left == right or {left, right} <= NUMERIC or DYN in (left, right)
        if node.op in ("==", "!="):
            comparable = (
                comparable or NULL in (left, right) or (left.name == right.name and left.name in ("list", "map"))
            )
        elif left not in _ORDERED and left != DYN:
            raise TypeProblem(node.op_start, f"{node.op!r} cannot order {self.described(node.left, left)}")
        if not comparable:
            raise TypeProblem(node.op_start, f"{node.op!r} cannot compare {left} with {right}: "
                                             f"{self.described(node.left, left)} and "
                                             f"{self.described(node.right, right)}")  # fmt: skip
        return BOOL

    def conditional(self, node: Conditional) -> CelType:
        condition = self.type_of(node.condition)
        if condition not in (BOOL, DYN):
            raise TypeProblem(node.condition.start, f"the condition before '?' must be true or false, but "
                                                    f"{self.described(node.condition, condition)}")  # fmt: skip
        then, otherwise = self.type_of(node.then), self.type_of(node.otherwise)
        if then == otherwise or DYN in (then, otherwise):
            return then if then == otherwise else DYN
        if NUMBER in (then, otherwise) and {then, otherwise} <= {NUMBER, INT, DOUBLE}:
            decided = otherwise if then == NUMBER else then
            self.commit(node.then if then == NUMBER else node.otherwise, decided)
            return decided
        raise TypeProblem(node.then.start, f"both results of '?:' must have one type, but "
                                           f"{self.described(node.then, then)} and "
                                           f"{self.described(node.otherwise, otherwise)}")  # fmt: skip

    def call(self, node: Call) -> CelType:
        if node.target is not None and node.function in _MACROS:
            return self.macro(node, node.target)
        args = [self.settled(arg) for arg in node.args]
        target = self.settled(node.target) if node.target is not None else None
        if node.function == "has":
            if len(node.args) != 1 or not isinstance(node.args[0], Select):
                raise TypeProblem(node.start, "has() takes one field, e.g. has(metrics.temp_c)")
            return BOOL
        if node.function == "dyn":
            self.arity(node, args, 1)
            return DYN
        if node.function == "type":
            self.arity(node, args, 1)
            return TYPE
        if node.function in _CONVERSIONS and target is None:
            return self.conversion(node, args)
        if node.function == "size":
            values = [target] if target is not None else []
            self.arity(node, values + args, 1)
            return self.sized(node, (values + args)[0])
        if node.function in _STRING_TESTS:
            return self.string_test(node, target, args)
        if node.function in _TIME_PARTS:
            return self.time_part(node, target, args)
        return DYN  # unknown functions were refused before the type check

    def arity(self, node: Call, args: list[CelType], count: int) -> None:
        if len(args) != count:
            raise TypeProblem(node.start, f"{node.function}() takes {count} argument(s), not {len(args)}")

    def conversion(self, node: Call, args: list[CelType]) -> CelType:
        self.arity(node, args, 1)
        result, accepted = _CONVERSIONS[node.function]
        if args[0] not in accepted and args[0] != DYN:
            names = ", ".join(sorted(str(t) for t in accepted if t != NUMBER))
            raise TypeProblem(node.start, f"{node.function}() converts {names}, but "
                                          f"{self.described(node.args[0], args[0])}")  # fmt: skip
        return result

    def sized(self, node: Call, of: CelType) -> CelType:
        if of in (STRING, BYTES, DYN) or of.name in ("list", "map"):
            return INT
        raise TypeProblem(node.start, f"size() measures a string, bytes, list or map, not {of}")

    def string_test(self, node: Call, target: CelType | None, args: list[CelType]) -> CelType:
        if target is None or len(args) != 1 or any(t not in (STRING, DYN) for t in (target, *args)):
            raise TypeProblem(node.start, f"{node.function}() is a method of a string with one string argument, "
                                          f"e.g. device.{node.function}('box-')")  # fmt: skip
        return BOOL

    def time_part(self, node: Call, target: CelType | None, args: list[CelType]) -> CelType:
        if target not in (TIMESTAMP, DURATION, DYN) or args:
            raise TypeProblem(node.start, f"{node.function}() is a method of a timestamp or duration, without "
                                          f"arguments, e.g. duration('90m').{node.function}()")  # fmt: skip
        return INT

    def macro(self, node: Call, target_node: Node) -> CelType:
        target = self.settled(target_node)
        arity = (2, 3) if node.function == "map" else (2,)
        if len(node.args) not in arity or not isinstance(node.args[0], Ident):
            raise TypeProblem(node.start, f"{node.function}() takes a variable name and an expression, "
                                          f"e.g. metrics.{node.function}(k, metrics[k] > 0.0)")  # fmt: skip
        if target.name in ("list", "map"):
            element = target.params[0]
        elif target == DYN:
            element = DYN
        else:
            raise TypeProblem(target_node.start, f"{node.function}() iterates over a list or map, but "
                                                 f"{self.described(target_node, target)}")  # fmt: skip
        variable = node.args[0].name
        outer = self.scope.get(variable)
        self.scope[variable] = element
        try:
            return self.macro_body(node, element)
        finally:
            if outer is None:
                del self.scope[variable]
            else:
                self.scope[variable] = outer

    def macro_body(self, node: Call, element: CelType) -> CelType:
        predicates = node.args[1:2] if node.function != "map" or len(node.args) == 3 else ()
        for predicate in predicates:
            found = self.type_of(predicate)
            if found not in (BOOL, DYN):
                raise TypeProblem(predicate.start, f"{node.function}() needs a condition (true or false), but "
                                                   f"{self.described(predicate, found)}")  # fmt: skip
        if node.function == "map":
            return list_of(self.settled(node.args[-1]))
        return list_of(element) if node.function == "filter" else BOOL


def _arithmetic_result(op: str, left: CelType, right: CelType) -> CelType | None:
    if left == right and left in (INT, UINT, DOUBLE) and not (op == "%" and left == DOUBLE):
        return left
    if op == "+" and left == right and (left in (STRING, BYTES, DURATION) or left.name == "list"):
        return left
    if op == "+" and {left, right} == {TIMESTAMP, DURATION}:
        return TIMESTAMP
    if op == "-" and left in (TIMESTAMP, DURATION) and right == DURATION:
        return left
    if op == "-" and left == right == TIMESTAMP:
        return DURATION
    return None


def _int_literals(node: Node) -> list[Literal]:
    """The integer literals of an untyped integer expression (literals, '-', arithmetic and '?:' of them)."""
    if isinstance(node, Literal):
        return [node] if node.kind == "int" else []
    if isinstance(node, Unary):
        return _int_literals(node.operand)
    if isinstance(node, Binary):
        return _int_literals(node.left) + _int_literals(node.right)
    if isinstance(node, Conditional):
        return _int_literals(node.then) + _int_literals(node.otherwise)
    return []
