"""The CEL subset used by x-kubernetes-validations rules."""

from __future__ import annotations

from typing import Any

import pytest

from tests.kube.emulator import cel

SPEC = {"name": "adapter-1", "rank": 8, "alpha": 16.0, "tags": ["a", "b"], "limits": {"gpu": 1}}


@pytest.mark.parametrize(("rule", "expected"), [
    ("self.rank == 8", True),
    ("self.rank > 8 || self.alpha >= 16.0", True),
    ("self.rank * 2 == self.alpha", True),
    ("self.rank % 3 == 2 && self.rank / 3 == 2", True),
    ("-self.rank < 0", True),
    ("has(self.name) && !has(self.missing)", True),
    ("size(self.tags) == 2 && self.tags.size() == 2", True),
    ("'a' in self.tags && !('z' in self.tags)", True),
    ("'gpu' in self.limits", True),
    ("self.name.startsWith('adapter') && self.name.endsWith('-1')", True),
    ('self.name.contains("pter") && self.name.matches("^[a-z]+-[0-9]$")', True),
    ("self.tags.all(t, size(t) == 1)", True),
    ("self.tags.exists(t, t == 'b')", True),
    ("self.tags.exists_one(t, t != 'c')", False),
    ("self.tags.map(t, t + t) == ['aa', 'bb']", True),
    ("self.tags.filter(t, t == 'a') == ['a']", True),
    ("self.limits.all(k, self.limits[k] > 0)", True),
    ("self.rank > 4 ? self.alpha > 1.0 : false", True),
    ("self.tags[0] == 'a'", True),
    ("[1, 2, 3].exists(x, x == self.rank)", False),
    ("int('3') + 1 == 4 && string(1) == '1' && double(2) == 2.0", True),
])
def test_rules_evaluate(rule: str, expected: bool) -> None:
    assert bool(cel.check_rules([{"rule": rule}], SPEC, cel.MISSING, "spec") == []) is expected


@pytest.mark.parametrize(("rule", "old", "new", "passes"), [
    ("self == oldSelf", "a", "a", True),
    ("self == oldSelf", "a", "b", False),
    ("self == oldSelf", cel.MISSING, "b", True),  # transition rules skip creates
    ("!has(oldSelf.x) || has(self.x)", {"x": 1}, {}, False),
    ("!has(oldSelf.x) || has(self.x)", {}, {}, True),
    ("self.replicas >= oldSelf.replicas", {"replicas": 2}, {"replicas": 3}, True),
    ("self.replicas >= oldSelf.replicas", {"replicas": 2}, {"replicas": 1}, False),
])
def test_transition_rules(rule: str, old: Any, new: Any, passes: bool) -> None:
    assert (cel.check_rules([{"rule": rule}], new, old, "spec") == []) is passes


def test_failure_carries_the_message_reason_and_field_path() -> None:
    rules = [{"rule": "self.rank <= 4", "message": "rank too big", "reason": "FieldValueForbidden",
              "fieldPath": ".rank"}]
    assert cel.check_rules(rules, SPEC, cel.MISSING, "spec") == [
        {"reason": "FieldValueForbidden", "field": "spec.rank", "message": "Forbidden: rank too big"}]


def test_failure_without_a_message_names_the_rule() -> None:
    (cause,) = cel.check_rules([{"rule": "self.rank == 1"}], SPEC, cel.MISSING, "spec")
    assert cause["message"] == 'Invalid value: "object": failed rule: self.rank == 1'


@pytest.mark.parametrize(("rule", "fragment"), [
    ("self.missing == 1", "no such key: missing"),
    ("self.rank ==", "Syntax error"),
    ("self.rank == 1 1", "Syntax error"),
    ("frobnicate(self)", "undeclared reference to 'frobnicate'"),
    ("self.name.reverse()", "found no matching overload for 'reverse'"),
    ("self.rank && true", "no such overload"),
    ("self.rank + 'x' == 1", "no such overload"),
    ("self.name # comment", "Syntax error"),
])
def test_broken_or_failing_rules_report_why(rule: str, fragment: str) -> None:
    (cause,) = cel.check_rules([{"rule": rule}], SPEC, cel.MISSING, "spec")
    assert fragment in cause["message"] and rule in cause["message"]


def test_rules_that_misuse_types_fail_instead_of_crashing() -> None:
    (cause,) = cel.check_rules([{"rule": "size(self.rank) > 1"}], SPEC, cel.MISSING, "spec")
    assert "no such overload" in cause["message"]
