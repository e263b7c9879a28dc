"""A small CEL evaluator for ``x-kubernetes-validations`` rules.

Called by :func:`.schemas.validate` for each schema node that carries rules. It covers
the part of CEL that CRD rules are written in: literals, ``self`` and ``oldSelf``,
field selection and indexing, ``has()``, ``size()``, arithmetic, comparison, ``in``,
``&&``/``||``/``!``, the ternary operator, list literals, the string methods
``startsWith``/``endsWith``/``contains``/``matches`` and the macros ``all``,
``exists``, ``exists_one``, ``map`` and ``filter``. Anything else is refused with a
clear :class:`CelError`, which surfaces as a 422 naming the rule.

Transition rules (those that mention ``oldSelf``) are evaluated only on updates where
the old value exists, as the real server does.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: Sentinel for "no old value at this path" (creates, or fields added by the update).
MISSING: Any = object()

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<number>\d+\.\d+(?:[eE][-+]?\d+)?|\d+u?)
     |(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
     |(?P<name>[A-Za-z_][A-Za-z0-9_]*)
     |(?P<op>\|\||&&|==|!=|<=|>=|[<>!+\-*/%?:.,()\[\]{}])
    )""", re.VERBOSE)


class CelError(Exception):
    """A rule that does not parse or cannot be evaluated against the value."""


def tokenize(text: str) -> list[tuple[str, Any]]:
    """Split a rule into (kind, value) tokens; pure."""
    tokens, position = [], 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise CelError(f"Syntax error: unexpected character at {position} in {text!r}")
        position = match.end()
        kind = match.lastgroup
        value: Any = match[kind]
        if kind == "number":
            value = float(value) if "." in value else int(value.rstrip("u"))
        elif kind == "string":
            value = json.loads('"' + value[1:-1].replace('"', '\\"').replace("\\'", "'") + '"')
        elif kind == "name" and value in ("true", "false", "null"):
            kind, value = "literal", {"true": True, "false": False, "null": None}[value]
        tokens.append((kind, value))
    tokens.append(("end", None))
    return tokens


class _Parser:
    """Recursive-descent parser building nested tuples: ("op", args...)."""

    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.index = 0

    def peek(self, value: Any = None) -> bool:
        kind, token = self.tokens[self.index]
        return token == value and kind in ("op", "name") if value is not None else False

    def take(self, value: str | None = None) -> tuple[str, Any]:
        kind, token = self.tokens[self.index]
        if value is not None and token != value:
            raise CelError(f"Syntax error: expected {value!r}, found {token!r}")
        self.index += 1
        return kind, token

    def parse(self) -> tuple:
        node = self.ternary()
        if self.tokens[self.index][0] != "end":
            raise CelError(f"Syntax error: unexpected {self.tokens[self.index][1]!r}")
        return node

    def ternary(self) -> tuple:
        node = self.binary(0)
        if self.peek("?"):
            self.take("?")
            yes = self.ternary()
            self.take(":")
            return ("?:", node, yes, self.ternary())
        return node

    _LEVELS = (("||",), ("&&",), ("==", "!=", "<", "<=", ">", ">=", "in"), ("+", "-"), ("*", "/", "%"))

    def binary(self, level: int) -> tuple:
        if level == len(self._LEVELS):
            return self.unary()
        node = self.binary(level + 1)
        while any(self.peek(op) for op in self._LEVELS[level]):
            _, op = self.take()
            node = (op, node, self.binary(level + 1))
        return node

    def unary(self) -> tuple:
        if self.peek("!"):
            self.take()
            return ("!", self.unary())
        if self.peek("-"):
            self.take()
            return ("neg", self.unary())
        return self.member()

    def args(self, close: str) -> list[tuple]:
        items = []
        while not self.peek(close):
            items.append(self.ternary())
            if not self.peek(close):
                self.take(",")
        self.take(close)
        return items

    def member(self) -> tuple:
        node = self.primary()
        while True:
            if self.peek("."):
                self.take()
                kind, name = self.take()
                if kind != "name":
                    raise CelError(f"Syntax error: expected a field name after '.', found {name!r}")
                if self.peek("("):
                    self.take("(")
                    node = ("method", node, name, self.args(")"))
                else:
                    node = ("field", node, name)
            elif self.peek("["):
                self.take("[")
                node = ("index", node, self.ternary())
                self.take("]")
            else:
                return node

    def primary(self) -> tuple:
        kind, token = self.take()
        if kind in ("number", "string", "literal"):
            return ("lit", token)
        if kind == "name":
            if self.peek("("):
                self.take("(")
                return ("call", token, self.args(")"))
            return ("var", token)
        if token == "(":
            node = self.ternary()
            self.take(")")
            return node
        if token == "[":
            return ("list", self.args("]"))
        raise CelError(f"Syntax error: unexpected {token!r}")


_MACROS = ("all", "exists", "exists_one", "map", "filter")


def _select(value: Any, name: str) -> Any:
    if isinstance(value, dict):
        if name not in value:
            raise CelError(f"no such key: {name}")
        return value[name]
    raise CelError(f"type '{type(value).__name__}' does not support field selection")


def evaluate(node: tuple, env: dict[str, Any]) -> Any:
    """Evaluate a parsed rule in an environment (``self``, ``oldSelf``, macro variables); pure."""
    op = node[0]
    if op == "lit":
        return node[1]
    if op == "var":
        if node[1] not in env:
            raise CelError(f"undeclared reference to '{node[1]}'")
        return env[node[1]]
    if op == "list":
        return [evaluate(item, env) for item in node[1]]
    if op == "field":
        return _select(evaluate(node[1], env), node[2])
    if op == "index":
        container, key = evaluate(node[1], env), evaluate(node[2], env)
        try:
            return container[key]
        except (KeyError, IndexError, TypeError) as exc:
            raise CelError(f"no such key: {key}") from exc
    if op == "!":
        return not _bool(evaluate(node[1], env))
    if op == "neg":
        return -evaluate(node[1], env)
    if op == "&&":
        return _bool(evaluate(node[1], env)) and _bool(evaluate(node[2], env))
    if op == "||":
        return _bool(evaluate(node[1], env)) or _bool(evaluate(node[2], env))
    if op == "?:":
        return evaluate(node[2] if _bool(evaluate(node[1], env)) else node[3], env)
    if op == "call":
        return _call(node[1], node[2], env)
    if op == "method":
        return _method(node, env)
    left, right = evaluate(node[1], env), evaluate(node[2], env)
    return _binary(op, left, right)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise CelError(f"no such overload: expected bool, got {type(value).__name__}")
    return value


def _binary(op: str, left: Any, right: Any) -> Any:
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    if op == "in":
        return left in right
    try:
        if op == "<":
            return left < right
        if op == "<=":
            return left <= right
        if op == ">":
            return left > right
        if op == ">=":
            return left >= right
        if op == "+":
            return left + right
        if op == "-":
            return left - right
        if op == "*":
            return left * right
        if op == "/":
            return left // right if isinstance(left, int) and isinstance(right, int) else left / right
        if op == "%":
            return left % right
    except (TypeError, ZeroDivisionError) as exc:
        raise CelError(f"no such overload: {op} on {type(left).__name__}, {type(right).__name__}") from exc
    raise CelError(f"unsupported operator {op}")


def _call(name: str, args: list[tuple], env: dict[str, Any]) -> Any:
    if name == "has":
        if len(args) != 1 or args[0][0] != "field":
            raise CelError("invalid argument to has() macro")
        container = evaluate(args[0][1], env)
        return isinstance(container, dict) and args[0][2] in container
    values = [evaluate(arg, env) for arg in args]
    if name == "size" and len(values) == 1:
        return len(values[0])
    if name == "int" and len(values) == 1:
        return int(values[0])
    if name == "string" and len(values) == 1:
        return values[0] if isinstance(values[0], str) else json.dumps(values[0])
    if name == "double" and len(values) == 1:
        return float(values[0])
    raise CelError(f"undeclared reference to '{name}'")


def _method(node: tuple, env: dict[str, Any]) -> Any:
    _, target_node, name, args = node
    target = evaluate(target_node, env)
    if name in _MACROS:
        if len(args) != 2 or args[0][0] != "var":
            raise CelError(f"invalid arguments to {name}() macro")
        variable = args[0][1]
        items = list(target.keys()) if isinstance(target, dict) else list(target)
        results = [evaluate(args[1], {**env, variable: item}) for item in items]
        if name == "all":
            return all(_bool(result) for result in results)
        if name == "exists":
            return any(_bool(result) for result in results)
        if name == "exists_one":
            return sum(1 for result in results if _bool(result)) == 1
        if name == "map":
            return results
        return [item for item, keep in zip(items, results, strict=True) if _bool(keep)]
    values = [evaluate(arg, env) for arg in args]
    if name == "size" and not values:
        return len(target)
    if isinstance(target, str) and len(values) == 1:
        if name == "startsWith":
            return target.startswith(values[0])
        if name == "endsWith":
            return target.endswith(values[0])
        if name == "contains":
            return values[0] in target
        if name == "matches":
            return re.search(values[0], target) is not None
    raise CelError(f"found no matching overload for '{name}'")


def _mentions_old_self(node: Any) -> bool:
    if isinstance(node, tuple):
        return node == ("var", "oldSelf") or any(_mentions_old_self(part) for part in node)
    if isinstance(node, list):
        return any(_mentions_old_self(part) for part in node)
    return False


def _type_name(value: Any) -> str:
    """The quoted type name the real server puts in CEL failures (``Invalid value: "string": ...``)."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}
    return f'"{names.get(type(value), "null")}"'


_REASON_PREFIX = {
    "FieldValueForbidden": "Forbidden",
    "FieldValueRequired": "Required value",
    "FieldValueDuplicate": "Duplicate value",
}


def check_rules(rules: list[dict[str, Any]], value: Any, old: Any, field: str) -> list[dict[str, str]]:
    """Evaluate a node's ``x-kubernetes-validations``; pure, called by :func:`.schemas.validate`.

    Returns one cause per failed rule, with the rule's ``message`` (or ``failed rule: <rule>``),
    its ``reason`` and ``fieldPath`` when given.
    """
    causes = []
    for rule in rules:
        text = rule.get("rule", "")
        try:
            tree = _Parser(text).parse()
            if _mentions_old_self(tree) and old is MISSING:
                continue
            passed = evaluate(tree, {"self": value, "oldSelf": old}) is True
            message = rule.get("message") or f"failed rule: {text}"
        except CelError as exc:
            passed, message = False, f"{exc} evaluating rule: {text}"
        except (TypeError, ValueError, AttributeError, re.error) as exc:  # e.g. size() of a number
            passed, message = False, f"no such overload: {exc} evaluating rule: {text}"
        if passed:
            continue
        reason = rule.get("reason") or "FieldValueInvalid"
        path = field + rule["fieldPath"] if rule.get("fieldPath") else field
        prefix = _REASON_PREFIX.get(reason)
        text_out = f"{prefix}: {message}" if prefix else f"Invalid value: {_type_name(value)}: {message}"
        causes.append({"reason": reason, "field": path, "message": text_out})
    return causes
