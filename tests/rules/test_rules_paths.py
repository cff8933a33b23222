"""The fast check of rule paths agrees with the rule-by-rule one."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from rules.paths import _CLEAN, NAME_MAX, explain_path, path_problem

PIECES = ["/", "a", "b", ".", "..", " ", "\t", "\x00", "\x1f", "\x7f", "\u00a0", "\u2003",
          "é", "x y", "\n", "\u0085"]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=10).map("".join))
def test_fast_and_slow_checks_agree(path):
    assert path_problem(path) == explain_path(path)
    if len(path) <= NAME_MAX and path.isascii():
        assert (_CLEAN.fullmatch(path) is not None) == (explain_path(path) is None)


@given(st.text(max_size=20))
def test_any_text(path):
    assert path_problem(path) == explain_path(path)
