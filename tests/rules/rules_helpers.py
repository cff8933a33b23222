"""Helpers for the rules tests: build policies from text, collect problems."""

from __future__ import annotations

import textwrap

import pytest

import rules

# The smallest valid policy; tests append or replace parts of it.
MINIMAL = """\
[pod]
name = "t"
root = "/srv/t"

[pea.a.files]
"/" = "r"
"""


def problems_of(text: str | bytes, name: str = "p.toml") -> list[str]:
    """Every problem of policy *text*, as FILE:LINE: message strings."""
    if isinstance(text, str):
        text = textwrap.dedent(text)
    with pytest.raises(rules.PolicyError) as caught:
        rules.loads(text, name)
    return [str(p) for p in caught.value.errors]


def policy_of(text: str, **kw) -> rules.Policy:
    return rules.loads(textwrap.dedent(text), "p.toml", **kw)
