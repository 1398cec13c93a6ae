"""The subset of expr-lang (Argo's expression language) that the local engine evaluates:
``||``, ``&&``, ``!``, parentheses, ``==``, ``!=``, ``in [...]``, ``matches`` (a Go RE2
pattern, searched for as ``re.search`` does), string literals and dotted names read from a
scope of strings and booleans, with expr-lang's precedence (``!`` binds tightest, then the
comparisons, ``&&``, ``||``).  Anything else, a name the scope lacks and an operand of the
wrong type are an ``ExpressionError``: never a silent true or false."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

Value = str | bool | list
Scope = Mapping[str, str | bool]
Term = Callable[[Scope], Value]

TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)
    | (?P<operator>\|\||&&|==|!=|!|[()\[\],])
    )""",
    re.VERBOSE,
)
KEYWORDS = {"in", "matches"}  # names that are operators
COMPARISONS = {"==", "!=", "in", "matches"}
ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "r": "\r", "t": "\t"}


class ExpressionError(ValueError):
    """An expression outside the subset, or one that cannot be evaluated in its scope."""


@dataclass(frozen=True)
class Expression:
    """A parsed expression: the names it reads, and its boolean value in a scope."""

    text: str
    names: frozenset[str]
    term: Term

    def evaluate(self, scope: Scope) -> bool:
        try:
            value = self.term(scope)
        except ExpressionError as exc:
            raise ExpressionError(f"{self.text!r}: {exc}") from None
        if not isinstance(value, bool):
            raise ExpressionError(f"{self.text!r} is {value!r}, not a boolean")
        return value


def parse(text: str) -> Expression:
    """Parse ``text``; ExpressionError if it is not in the subset."""
    parser = _Parser(text)
    term = parser.disjunction()
    if parser.tokens:
        raise ExpressionError(f"{text!r}: unexpected {parser.tokens[0][1]!r}")
    return Expression(text, frozenset(parser.names), term)


def evaluate(text: str, scope: Scope) -> bool:
    """Parse and evaluate ``text`` in ``scope``."""
    return parse(text).evaluate(scope)


class _Parser:
    """Recursive descent over the tokens, building each term as a function of the scope."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.names: set[str] = set()

    def disjunction(self) -> Term:
        return self._chain("||", self.conjunction)

    def conjunction(self) -> Term:
        return self._chain("&&", self.comparison)

    def _chain(self, operator: str, operand: Callable[[], Term]) -> Term:
        term = operand()
        while self._accept(operator):
            term = _logic(operator, term, operand())
        return term

    def comparison(self) -> Term:
        term = self.unary()
        while (operator := self._peek()) in COMPARISONS:
            self.tokens.pop(0)
            term = _compare(operator, term, self.unary())
        return term

    def unary(self) -> Term:
        if self._accept("!"):
            operand = self.unary()
            return lambda scope: not _boolean(operand(scope), "!")
        return self.primary()

    def primary(self) -> Term:
        if not self.tokens:
            raise ExpressionError(f"{self.text!r}: unexpected end")
        kind, text = self.tokens.pop(0)
        if kind == "string":
            value = _unquote(text)
            return lambda scope: value
        if kind == "name":
            self.names.add(text)
            return lambda scope: _lookup(scope, text)
        if text == "(":
            term = self.disjunction()
            self._expect(")")
            return term
        if text == "[":
            items: list[Term] = []
            while not self._accept("]"):
                if items:
                    self._expect(",")
                items.append(self.disjunction())
            return lambda scope: [item(scope) for item in items]
        raise ExpressionError(f"{self.text!r}: unexpected {text!r}")

    def _peek(self) -> str | None:
        """The next token, if it is an operator."""
        return self.tokens[0][1] if self.tokens and self.tokens[0][0] == "operator" else None

    def _accept(self, operator: str) -> bool:
        if self._peek() == operator:
            self.tokens.pop(0)
            return True
        return False

    def _expect(self, operator: str) -> None:
        if not self._accept(operator):
            found = repr(self.tokens[0][1]) if self.tokens else "the end"
            raise ExpressionError(f"{self.text!r}: expected {operator!r}, found {found}")


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text) pairs: string, name or operator (``in`` and ``matches`` are operators)."""
    tokens: list[tuple[str, str]] = []
    at, end = 0, len(text.rstrip())
    while at < end:
        match = TOKEN.match(text, at)
        if match is None:
            raise ExpressionError(f"{text!r}: unexpected {text[at:end].strip()!r}")
        kind = str(match.lastgroup)
        word = match[kind]
        tokens.append(("operator" if word in KEYWORDS else kind, word))
        at = match.end()
    return tokens


def _unquote(literal: str) -> str:
    def escape(match: re.Match[str]) -> str:
        if match[1] not in ESCAPES:
            raise ExpressionError(f"{literal}: unsupported escape \\{match[1]}")
        return ESCAPES[match[1]]

    return re.sub(r"\\(.)", escape, literal[1:-1])


def _lookup(scope: Scope, name: str) -> str | bool:
    if name not in scope:
        raise ExpressionError(f"unknown name {name!r}")
    return scope[name]


def _boolean(value: Value, operator: str) -> bool:
    if not isinstance(value, bool):
        raise ExpressionError(f"{operator}: {value!r} is not a boolean")
    return value


def _logic(operator: str, left: Term, right: Term) -> Term:
    def term(scope: Scope) -> bool:
        first, second = _boolean(left(scope), operator), _boolean(right(scope), operator)
        return first or second if operator == "||" else first and second

    return term


def _compare(operator: str, left: Term, right: Term) -> Term:
    def term(scope: Scope) -> bool:
        first, second = left(scope), right(scope)
        if operator in ("==", "!="):
            return (first == second) == (operator == "==")
        if operator == "in":
            if not isinstance(second, list):
                raise ExpressionError(f"in: {second!r} is not an array")
            return first in second
        if not (isinstance(first, str) and isinstance(second, str)):
            raise ExpressionError(f"matches: {first!r} and {second!r} are not both strings")
        try:
            return re.search(second, first) is not None
        except re.error as exc:
            raise ExpressionError(f"matches: invalid pattern {second!r}: {exc}") from None

    return term
