"""Device labels and label selectors, Kubernetes style: ``site=berlin,tier!=lab,gpu``.

Grammar (whitespace allowed around every token)::

    selector    := "" | requirement ("," requirement)*
    requirement := key | "!" key
                 | key ("=" | "==" | "!=") value
                 | key ("in" | "notin") "(" value ("," value)* ")"

Invariants:
- keys and values match ``LABEL_PATTERN`` (1 to 63 characters, starting with a letter or
  digit), so a selector or a label set never holds an empty, blank or unprintable name;
- ``!=`` and ``notin`` also match a device that lacks the key, as in Kubernetes;
- the empty selector matches every device;
- a ``Selector`` is immutable and its requirements are kept sorted and deduplicated, so
  ``str(selector)`` is one canonical form and ``parse_selector(str(s)) == s``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import NoReturn

from ..errors import SelectorError

__all__ = [
    "LABEL_PATTERN",
    "Operator",
    "Requirement",
    "Selector",
    "parse_labels",
    "parse_selector",
    "verify_labels",
]

LABEL_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}"
_LABEL = re.compile(LABEL_PATTERN)
# Tokens of the grammar; a word is taken greedily, then checked as a label.
_TOKEN = re.compile(r"(?P<op>==|!=|=|!|\(|\)|,)|(?P<word>[A-Za-z0-9._/-]+)")


class Operator(StrEnum):
    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    NOT_EXISTS = "!"


_ORDER = {op: i for i, op in enumerate(Operator)}


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        match self.operator:
            case Operator.EXISTS:
                return value is not None
            case Operator.NOT_EXISTS:
                return value is None
            case Operator.EQUALS | Operator.IN:
                return value is not None and value in self.values
            case Operator.NOT_EQUALS | Operator.NOT_IN:
                return value is None or value not in self.values

    def sort_key(self) -> tuple[str, int, tuple[str, ...]]:
        return (self.key, _ORDER[self.operator], self.values)

    def __str__(self) -> str:
        match self.operator:
            case Operator.EXISTS:
                return self.key
            case Operator.NOT_EXISTS:
                return f"!{self.key}"
            case Operator.EQUALS | Operator.NOT_EQUALS:
                return f"{self.key}{self.operator.value}{self.values[0]}"
            case Operator.IN | Operator.NOT_IN:
                return f"{self.key} {self.operator.value} ({','.join(self.values)})"


@dataclass(frozen=True)
class Selector:
    """All of ``requirements`` must hold (a logical AND); none at all matches everything."""

    requirements: tuple[Requirement, ...] = ()

    def __post_init__(self) -> None:
        canonical = tuple(sorted(set(self.requirements), key=Requirement.sort_key))
        object.__setattr__(self, "requirements", canonical)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement.matches(labels) for requirement in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(requirement) for requirement in self.requirements)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, position)
        self.index = 0
        position = 0
        while True:
            while position < len(text) and text[position].isspace():
                position += 1
            if position == len(text):
                break
            match = _TOKEN.match(text, position)
            if match is None:
                self.fail(f"unexpected character {text[position]!r}", position)
            kind = "op" if match.group("op") else "word"
            self.tokens.append((kind, match.group(kind), position))
            position = match.end()

    def fail(self, message: str, position: int | None = None) -> NoReturn:
        if position is None:
            token = self.peek()
            position = len(self.text) if token is None else token[2]
        raise SelectorError(message, text=self.text, position=position)

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take_op(self, *ops: str) -> str | None:
        token = self.peek()
        if token is not None and token[0] == "op" and token[1] in ops:
            self.index += 1
            return token[1]
        return None

    def label(self, what: str) -> str:
        token = self.peek()
        if token is None or token[0] != "word":
            self.fail(f"expected a {what}, found {'the end' if token is None else repr(token[1])}")
        problem = _label_problem(what, token[1])
        if problem:
            self.fail(problem)
        self.index += 1
        return token[1]

    def requirement(self) -> Requirement:
        if self.take_op("!"):
            return Requirement(self.label("key"), Operator.NOT_EXISTS)
        key = self.label("key")
        operator = self.take_op("=", "==", "!=")
        if operator is not None:
            op = Operator.NOT_EQUALS if operator == "!=" else Operator.EQUALS
            return Requirement(key, op, (self.label("value"),))
        token = self.peek()
        if token is None or token[0] != "word" or token[1] not in ("in", "notin"):
            return Requirement(key, Operator.EXISTS)
        self.index += 1
        if not self.take_op("("):
            self.fail(f"expected '(' after {token[1]!r}")
        values = [self.label("value")]
        while self.take_op(","):
            values.append(self.label("value"))
        if not self.take_op(")"):
            self.fail("expected ',' or ')' in a value set")
        op = Operator.IN if token[1] == "in" else Operator.NOT_IN
        return Requirement(key, op, tuple(sorted(set(values))))

    def selector(self) -> Selector:
        if not self.tokens:
            return Selector()
        requirements = [self.requirement()]
        while self.take_op(","):
            requirements.append(self.requirement())
        if self.peek() is not None:
            self.fail("expected ',' between requirements")
        return Selector(tuple(requirements))


def _label_problem(what: str, text: str) -> str | None:
    if _LABEL.fullmatch(text):
        return None
    return f"invalid label {what} {text!r} (1 to 63 characters matching {LABEL_PATTERN})"


def parse_selector(text: str) -> Selector:
    """Parse a label selector; raises ``SelectorError`` saying where it went wrong."""
    return _Parser(text).selector()


def verify_labels(labels: Mapping[str, str]) -> None:
    """Raise ``SelectorError`` unless every key and value is a valid label."""
    for key, value in labels.items():
        problem = _label_problem("key", key)
        if problem:
            raise SelectorError(problem, text=f"{key}={value}", position=0)
        problem = _label_problem("value", value)
        if problem:
            raise SelectorError(problem, text=f"{key}={value}", position=len(key) + 1)


def parse_labels(text: str) -> dict[str, str]:
    """Parse ``k=v,k2=v2`` (as given to ``--labels``) into a dict; each key at most once.

    An empty or blank text is no labels; spaces around keys and values are dropped.
    """
    labels: dict[str, str] = {}
    if not text.strip():
        return labels
    position = 0
    for part in text.split(","):
        start = position + len(part) - len(part.lstrip())
        position += len(part) + 1
        key, sep, value = (piece.strip() for piece in part.partition("="))
        if not sep:
            raise SelectorError("expected key=value", text=text, position=start)
        if key in labels:
            raise SelectorError(f"label {key!r} given twice", text=text, position=start)
        problem = _label_problem("key", key) or _label_problem("value", value)
        if problem:
            raise SelectorError(problem, text=text, position=start)
        labels[key] = value
    return labels
