"""Whatever a policy file holds, loading it gives a Policy or a PolicyError.

Random documents shaped like policies (the schema's own keys mixed with
others, values of every TOML type in every place) must never raise anything
but PolicyError, and every problem must name a line of the file: a daemon
given a hostile policy must refuse it with a message, not a traceback.
"""

from __future__ import annotations

import datetime
import json

from hypothesis import given, settings, strategies as st

import rules

KEYS = ["pod", "pea", "name", "hostname", "root", "uid_map", "gid_map", "default_pea", "init",
        "mount", "net", "limits", "host", "path", "rw", "address", "memory", "pids", "complain",
        "files", "exec", "connect", "bind", "smtpd", "a", "/", "/etc/", "/bin/sh", "x y", "É"]

scalars = st.one_of(
    st.sampled_from(["mail", "a", "/", "/etc/", "/var/x", "rw", "rx", "", "rr", "10.88.0.2/24",
                     "256M", "smtpd", "../x", "Mail", "/a//b"]),
    st.text(max_size=6),
    st.integers(-2, 70000), st.sampled_from([0, 1, 25, 65535, 100000, 2**32, -1]),
    st.booleans(), st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.just(datetime.date(2020, 1, 2)),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
    max_leaves=25,
)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=4)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic strings
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml_document(doc: dict) -> str:
    """Tables as [headers] where possible (so lines differ), the rest inline."""
    lines = []
    for k, v in doc.items():
        if not isinstance(v, dict):
            lines.append(f"{json.dumps(k)} = {toml_value(v)}")
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{json.dumps(k)}]")
            lines += [f"{json.dumps(k2)} = {toml_value(v2)}" for k2, v2 in v.items()]
            lines.append("")
    return "\n".join(lines) + "\n"


@settings(max_examples=500, deadline=None)
@given(documents)
def test_any_document_loads_or_fails_cleanly(doc):
    text = toml_document(doc)
    n_lines = text.count("\n")
    try:
        policy = rules.loads(text, "f.toml", base_dir="/b")
    except rules.PolicyError as error:
        assert error.errors
        for problem in error.errors:
            assert problem.file == "f.toml"
            assert 1 <= problem.line <= max(n_lines, 1), (problem, text)
            assert "\n" not in problem.message
    else:
        assert policy.peas and policy.default_pea in policy.peas


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_load_or_fail_cleanly(data):
    try:
        rules.loads(data, "f.toml")
    except rules.PolicyError as error:
        assert all(p.line >= 0 for p in error.errors)
