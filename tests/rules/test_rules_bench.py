"""bench/rules.py stays runnable (a smoke run; no timing is asserted)."""

from __future__ import annotations

import argparse

import rules
from bench import rules as bench_rules


def test_generated_policies_are_what_the_benchmark_claims():
    policy = rules.loads(bench_rules.policy_text(1000))
    pea = policy.pea("p")
    assert len(pea.files) == 1001
    path = bench_rules.rule_path(999)
    assert path == "/srv/pod/0/0/0/9/9/9" and path.count("/") == bench_rules.DEPTH
    assert pea.match(path).kind == "path"
    assert pea.match(path[:-1] + "x").rule == "/srv/"


def test_quick_run_produces_rows():
    result = bench_rules.run(argparse.Namespace(quick=True))
    assert [row["rules"] for row in result["rows"]] == [10, 1000, 10000]
    for row in result["rows"]:
        assert row["load_s"] > 0 and row["match_ns"] > 0 and row["spread_parts_ns"] > 0
