"""Load: 8 pod processes, 4 in each of two peas, signal each other at full
speed; no decision is lost or wrong. The supervisor's cost per mediated
call is printed (a figure, not an assertion: timing never decides a test).
"""

from __future__ import annotations

import errno

import trio

from testbed.seccomp_harness import Pea, fake_pod

SECONDS = 2.0


async def test_eight_processes_signalling_within_and_across_peas():
    peas = {"a": Pea("a", connect=True), "b": Pea("b", connect=True)}
    async with fake_pod(peas) as pod:
        agents = {"a": [], "b": []}
        for pea in ("a", "a", "a", "a", "b", "b", "b", "b"):
            agents[pea].append(await pod.agent(pea))
        plans = []
        for pea, other in (("a", "b"), ("b", "a")):
            for i, ag in enumerate(agents[pea]):
                mates = [x.vpid for x in agents[pea] if x is not ag]
                stranger = agents[other][i].vpid
                plans.append((ag, mates, stranger))
        results = {}
        sup = pod.supervisor
        before_ns, before_n = sup.busy_ns, sup.stats["kill"]

        async def run(ag, targets):
            results[ag.vpid] = await ag.call("signal_loop", targets, SECONDS, 0, timeout=60)

        async with trio.open_nursery() as n:
            for ag, mates, stranger in plans:
                n.start_soon(run, ag, mates + [stranger])
        calls = sup.stats["kill"] - before_n
        wrong = []
        total = 0
        for ag, mates, stranger in plans:
            res = results[ag.vpid]
            for t in mates:
                total += sum(res[t].values())
                if set(res[t]) != {0}:
                    wrong.append((ag.vpid, t, res[t]))
            total += sum(res[stranger].values())
            if set(res[stranger]) != {errno.EPERM}:
                wrong.append((ag.vpid, stranger, res[stranger]))
        assert wrong == []
        assert total == calls          # every call reached the supervisor once
        assert calls > 100
        per_call_us = (sup.busy_ns - before_ns) / calls / 1000
        print(f"\n[peas load] {calls} mediated kill() in {SECONDS:.0f} s by 8 processes: "
              f"{calls / SECONDS:.0f}/s, supervisor {per_call_us:.1f} us per call")
