"""A CEL syntax tree with source offsets, for the type check (celtypes.py).

The `common-expression-language` library parses but exposes no tree and checks no types, so this module
parses CEL's grammar (https://github.com/google/cel-spec/blob/master/doc/langdef.md#syntax) once more. It
runs only on text the library has already accepted, so its errors are rare; each names its offset."""

import re
from dataclasses import dataclass, field


class SyntaxProblem(Exception):
    def __init__(self, offset: int, reason: str):
        self.offset = offset
        super().__init__(reason)


@dataclass(frozen=True)
class Node:
    start: int = field(kw_only=True)  # offsets into the source: source[start:end] is this node's text
    end: int = field(kw_only=True)


@dataclass(frozen=True)
class Literal(Node):
    kind: str  # int, uint, double, string, bytes, bool, null
    text: str


@dataclass(frozen=True)
class Ident(Node):
    name: str


@dataclass(frozen=True)
class Select(Node):
    operand: Node
    name: str


@dataclass(frozen=True)
class Index(Node):
    operand: Node
    index: Node


@dataclass(frozen=True)
class Call(Node):
    function: str
    args: tuple[Node, ...]
    target: Node | None = None  # `x.f(a)` is a call of f with target x


@dataclass(frozen=True)
class ListLiteral(Node):
    items: tuple[Node, ...]


@dataclass(frozen=True)
class MapLiteral(Node):
    entries: tuple[tuple[Node, Node], ...]


@dataclass(frozen=True)
class Unary(Node):
    op: str
    operand: Node


@dataclass(frozen=True)
class Binary(Node):
    op: str
    left: Node
    right: Node
    op_start: int = field(kw_only=True)


@dataclass(frozen=True)
class Conditional(Node):
    condition: Node
    then: Node
    otherwise: Node


@dataclass(frozen=True)
class Token:
    kind: str  # number, string, ident, op, end
    text: str
    start: int


_STRING = "|".join(  # raw and bytes prefixes, then a triple-quoted or a one-line string
    (
        r"(?:[rR][bB]?|[bB][rR]?)?(?:'{3}(?:\\.|[^\\])*?'{3}",
        r'"{3}(?:\\.|[^\\])*?"{3}',
        r"'(?:\\.|[^'\\\n])*'",
        r'"(?:\\.|[^"\\\n])*")',
    )
)
_TOKEN = re.compile(
    rf"""(?P<space>\s+|//[^\n]*)
    |(?P<number>0[xX][0-9a-fA-F]+[uU]?|(?:\d+\.\d+|\.\d+)(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+[uU]?)
    |(?P<string>{_STRING})
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op>==|!=|<=|>=|&&|\|\||[-+*/%<>!?:.,()\[\]{{}}])""",
    re.VERBOSE | re.DOTALL,
)
_RELATIONS = ("<", "<=", ">", ">=", "==", "!=", "in")


def tokenize(source: str) -> list[Token]:
    tokens, offset = [], 0
    while offset < len(source):
        match = _TOKEN.match(source, offset)
        if match is None:
            raise SyntaxProblem(offset, f"unexpected character {source[offset]!r}")
        if match.lastgroup != "space":
            assert match.lastgroup is not None
            tokens.append(Token(match.lastgroup, match.group(), offset))
        offset = match.end()
    tokens.append(Token("end", "", len(source)))
    return tokens


def parse(source: str) -> Node:
    return _Parser(tokenize(source)).expression_then_end()


class _Parser:
    """Recursive descent, one method per precedence level of the grammar."""

    def __init__(self, tokens: list[Token]):
        self.tokens, self.at = tokens, 0

    def peek(self) -> Token:
        return self.tokens[self.at]

    def take(self) -> Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def end(self) -> int:
        """The offset just after the last token taken."""
        token = self.tokens[self.at - 1]
        return token.start + len(token.text)

    def accept(self, *texts: str) -> Token | None:
        token = self.peek()
        if token.kind in ("op", "ident") and token.text in texts:
            return self.take()
        return None

    def expect(self, text: str) -> Token:
        token = self.accept(text)
        if token is None:
            found = self.peek()
            raise SyntaxProblem(found.start, f"expected {text!r}, found {found.text or 'the end'!r}")
        return token

    def expression_then_end(self) -> Node:
        node = self.expression()
        if self.peek().kind != "end":
            raise SyntaxProblem(self.peek().start, f"unexpected {self.peek().text!r}")
        return node

    def expression(self) -> Node:
        condition = self.logical("||")
        if self.accept("?") is None:
            return condition
        then = self.logical("||")
        self.expect(":")
        return Conditional(condition, then, self.expression(), start=condition.start, end=self.end())

    def logical(self, op: str) -> Node:
        lower = (lambda: self.logical("&&")) if op == "||" else self.relation
        node = lower()
        while (token := self.accept(op)) is not None:
            node = Binary(op, node, lower(), start=node.start, end=self.end(), op_start=token.start)
        return node

    def relation(self) -> Node:
        node = self.binary(("+", "-"))
        while (token := self.accept(*_RELATIONS)) is not None:
            right = self.binary(("+", "-"))
            node = Binary(token.text, node, right, start=node.start, end=self.end(), op_start=token.start)
        return node

    def binary(self, ops: tuple[str, ...]) -> Node:
        def lower() -> Node:
            return self.binary(("*", "/", "%")) if ops == ("+", "-") else self.unary()

        node = lower()
        while (token := self.accept(*ops)) is not None:
            right = lower()
            node = Binary(token.text, node, right, start=node.start, end=self.end(), op_start=token.start)
        return node

    def unary(self) -> Node:
        token = self.accept("!", "-")
        if token is None:
            return self.member()
        operand = self.unary()
        return Unary(token.text, operand, start=token.start, end=self.end())

    def member(self) -> Node:
        node = self.primary()
        while True:
            if self.accept("."):
                name = self.take()
                if name.kind != "ident":
                    raise SyntaxProblem(name.start, f"expected a field name after '.', found {name.text!r}")
                if self.accept("("):
                    args = self.arguments(")")
                    node = Call(name.text, args, node, start=node.start, end=self.end())
                else:
                    node = Select(node, name.text, start=node.start, end=self.end())
            elif self.accept("["):
                index = self.expression()
                self.expect("]")
                node = Index(node, index, start=node.start, end=self.end())
            elif self.peek().text == "{" and self.peek().kind == "op":
                raise SyntaxProblem(self.peek().start, "message construction (Type{...}) is not available here")
            else:
                return node

    def arguments(self, close: str) -> tuple[Node, ...]:
        items: list[Node] = []
        while self.accept(close) is None:
            items.append(self.expression())
            if self.accept(",") is None:
                self.expect(close)
                break
        return tuple(items)

    def primary(self) -> Node:
        token = self.take()
        if token.kind == "number":
            return self.number(token)
        if token.kind == "string":
            prefix = token.text[: len(token.text) - len(token.text.lstrip("rRbB"))]
            kind = "bytes" if "b" in prefix.lower() else "string"
            return Literal(kind, token.text, start=token.start, end=self.end())
        if token.kind == "ident":
            return self.name(token)
        if token.text == "(":
            node = self.expression()
            self.expect(")")
            return node
        if token.text == "[":
            items = self.arguments("]")
            return ListLiteral(items, start=token.start, end=self.end())
        if token.text == "{":
            entries = self.entries()
            return MapLiteral(entries, start=token.start, end=self.end())
        if token.text == ".":  # a leading dot names the root scope: `.metrics`
            return self.name(self.take())
        raise SyntaxProblem(token.start, f"expected an operand, found {token.text or 'the end'!r}")

    def number(self, token: Token) -> Literal:
        text = token.text
        if text[-1] in "uU":
            kind = "uint"
        elif not text.lower().startswith("0x") and any(c in text for c in ".eE"):
            kind = "double"
        else:
            kind = "int"
        return Literal(kind, text, start=token.start, end=self.end())

    def name(self, token: Token) -> Node:
        if token.kind != "ident":
            raise SyntaxProblem(token.start, f"expected a name, found {token.text!r}")
        if token.text in ("true", "false"):
            return Literal("bool", token.text, start=token.start, end=self.end())
        if token.text == "null":
            return Literal("null", token.text, start=token.start, end=self.end())
        if self.accept("("):
            args = self.arguments(")")
            return Call(token.text, args, start=token.start, end=self.end())
        return Ident(token.text, start=token.start, end=self.end())

    def entries(self) -> tuple[tuple[Node, Node], ...]:
        entries: list[tuple[Node, Node]] = []
        while self.accept("}") is None:
            key = self.expression()
            self.expect(":")
            entries.append((key, self.expression()))
            if self.accept(",") is None:
                self.expect("}")
                break
        return tuple(entries)
