"""Matching and transitions against a deliberately naive reference.

The reference below is the four steps of docs/FORMAT.md section 7 written as plainly
as possible over the rules as written (a dict of strings, walking up the
path with string operations); the engine uses a tree of hash tables walked
down. Random policies (as TOML text, so parsing is covered too), random
paths over a small alphabet (so rules and paths collide often) and random
hard-link operations must give the same answers.
"""

from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st

import rules

NAMES = ["a", "b", "c", "é", "a b", "x.y"]


def parent(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


def naive_match(files: dict, path: str):
    """(perm, rule, kind) by the four steps, read literally."""
    if path == "/":
        return (files["/"], "/", "directory") if "/" in files else ("", "/", "default")
    # 1. If P has a path-specific rule, it decides.
    if path in files:
        return files[path], path, "path"
    # 2. Otherwise let D be P's parent directory.
    d = parent(path)
    while True:
        # 3. If D has a directory-default rule, it decides.
        key = "/" if d == "/" else d + "/"
        if key in files:
            return files[key], key, "directory"
        if d == "/":
            return "", "/", "default"   # the implicit deny-all rule on "/"
        # 4. Otherwise let D be D's parent and go to 3.
        d = parent(d)


def naive_transition(exec_table: dict, path: str):
    if path == "/":
        return exec_table.get("/")
    if path in exec_table:
        return exec_table[path]
    d = parent(path)
    while True:
        key = "/" if d == "/" else d + "/"
        if key in exec_table:
            return exec_table[key]
        if d == "/":
            return None
        d = parent(d)


paths = st.lists(st.sampled_from(NAMES), min_size=0, max_size=5).map(lambda p: "/" + "/".join(p))
nonroot_paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=5).map(lambda p: "/" + "/".join(p))
rule_keys = st.one_of(paths, nonroot_paths.map(lambda p: p + "/"))
perms = st.sets(st.sampled_from("rwx")).map(lambda s: "".join(sorted(s, key="rwx".index)))
PEAS = ["p0", "p1", "p2"]


@st.composite
def policies(draw):
    n = draw(st.integers(1, 3))
    peas = PEAS[:n]
    spec = {}
    for pea in peas:
        files = draw(st.dictionaries(rule_keys, perms, max_size=12))
        files.pop("", None)
        exec_table = draw(st.dictionaries(rule_keys, st.sampled_from(peas), max_size=5))
        spec[pea] = (files, exec_table)
    return spec


def to_toml(spec: dict) -> str:
    out = ['[pod]\nname = "t"\nroot = "/r"\ndefault_pea = "p0"\n']
    for pea, (files, exec_table) in spec.items():
        out.append(f"[pea.{pea}.files]")
        # Permissions shuffled back to any order: the loader normalises them.
        out += [f"{json.dumps(k, ensure_ascii=False)} = {json.dumps(v[::-1])}" for k, v in files.items()]
        out.append(f"[pea.{pea}.exec]")
        out += [f"{json.dumps(k, ensure_ascii=False)} = {json.dumps(v)}" for k, v in exec_table.items()]
    return "\n".join(out) + "\n"


def expected(spec, pea, path, links):
    """The naive answer, with hard-link rules (a path-specific rule that
    takes precedence over the pea's own rule on the same path)."""
    files, exec_table = spec[pea]
    if path in links:
        perm, exec_to = links[path][pea]
        return perm, path, "path", exec_to
    perm, rule, kind = naive_match(files, path)
    return perm, rule, kind, naive_transition(exec_table, path)


def check_all(policy, spec, queries, links):
    for pea in spec:
        engine = policy.pea(pea)
        for path in queries:
            want = expected(spec, pea, path, links)
            got = engine.match(path)
            assert tuple(got) == want, (pea, path)
            assert engine.transition(path) == want[3], (pea, path)
            parts = tuple(path.split("/")[1:]) if path != "/" else ()
            assert engine.match_parts(parts) == got


@settings(max_examples=300, deadline=None)
@given(policies(), st.lists(paths, min_size=1, max_size=30))
def test_matching_agrees_with_the_naive_four_steps(spec, queries):
    policy = rules.loads(to_toml(spec))
    # Also query every rule's own path and its neighbours.
    extra = []
    for files, exec_table in spec.values():
        for key in list(files) + list(exec_table):
            p = key.rstrip("/") or "/"
            extra += [p, parent(p), p + "/a" if p != "/" else "/a"]
    check_all(policy, spec, queries + extra, {})


ops = st.lists(st.tuples(st.sampled_from(["add", "drop"]), nonroot_paths, paths), max_size=12)


@settings(max_examples=200, deadline=None)
@given(policies(), ops, st.lists(paths, min_size=1, max_size=20))
def test_hard_links_agree_with_the_naive_model(spec, operations, queries):
    policy = rules.loads(to_toml(spec))
    links = {}   # new_path -> {pea: (perm, exec_to)}, computed by the reference
    for op, new, old in operations:
        if op == "add":
            entry = {pea: (expected(spec, pea, old, links)[0], expected(spec, pea, old, links)[3])
                     for pea in spec}
            links[new] = entry
            policy.add_link(new, old)
        else:
            links.pop(new, None)
            policy.drop_link(new)
    touched = [new for _, new, _ in operations] + [old for _, _, old in operations]
    check_all(policy, spec, queries + touched, links)
    # What links() saves restores the same answers in a fresh policy.
    fresh = rules.loads(to_toml(spec))
    fresh.restore_links(json.loads(json.dumps(policy.links())))
    check_all(fresh, spec, queries + touched, links)
    # Dropping every link gives back exactly the policy's own rules.
    for path in list(links):
        policy.drop_link(path)
    check_all(policy, spec, queries + touched, {})
