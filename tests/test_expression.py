"""The expr-lang subset the local engine evaluates (retry expressions, ``depends``)."""

from __future__ import annotations

import pytest

from dag.expression import ExpressionError, evaluate, parse

RETRY = {
    "lastRetry.status": "Failed",
    "lastRetry.exitCode": "143",
    "lastRetry.message": "The node was low on resource: memory.",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('lastRetry.exitCode == "143"', True),
        ('lastRetry.exitCode != "143"', False),
        ('lastRetry.exitCode in ["1", "2"]', False),
        ("lastRetry.exitCode in ['143']", True),
        ('lastRetry.message matches "low on|deadline"', True),  # searched, not anchored
        ('lastRetry.message matches "^memory"', False),
        ('lastRetry.status == "Error" || lastRetry.exitCode == "143"', True),
        ('lastRetry.status == "Error" && lastRetry.exitCode == "143"', False),
        ('!(lastRetry.status == "Error")', True),
        ("ok || ok && no", True),  # && binds tighter than ||
        ("(ok || ok) && no", False),
        ("!no == ok", True),  # ! binds tighter than ==: (!no) == ok
        ("!!ok", True),
        ('"a\\"b" == \'a"b\'', True),  # either quote, escapes as Go's
        ("'x\\ty' matches '\\t'", True),  # a tab in both
    ],
)
def test_evaluates_the_subset_as_expr_lang(text: str, expected: bool) -> None:
    assert evaluate(text, {**RETRY, "ok": True, "no": False}) is expected


def test_parse_reports_the_names_read() -> None:
    names = parse('a && !b.Succeeded || (c.Daemoned && d == "x")').names
    assert names == {"a", "b.Succeeded", "c.Daemoned", "d"}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("asInt(lastRetry.exitCode) > 1", "unexpected '> 1'"),  # no functions, no numbers
        ("asInt(lastRetry.exitCode)", r"unexpected '\('"),
        ("ok and ok", "unexpected 'and'"),
        ("lastRetry.exitCode ==", "unexpected end"),
        ("(ok", "expected '\\)', found the end"),
        ('ok in ["1", "2"', "expected ',', found the end"),
        ("", "unexpected end"),
        ('"\\d" == "d"', r"unsupported escape \\d"),
        ("ok ~ ok", "unexpected '~ ok'"),
        ("missing == ok", "unknown name 'missing'"),
        ('ok && "yes"', "is not a boolean"),
        ('lastRetry.exitCode in "143"', "is not an array"),
        ("ok matches ok", "are not both strings"),
        ('lastRetry.message matches "("', "invalid pattern"),
        ("lastRetry.status", "not a boolean"),
    ],
)
def test_anything_else_is_an_error_never_a_value(text: str, error: str) -> None:
    with pytest.raises(ExpressionError, match=error):
        evaluate(text, {**RETRY, "ok": True})
