"""``python -m bench peas``: what seccomp mediation costs a pod process.

One run, two stand-in pods (tests/pods/seccomp_harness.py) with the same
namespaces: one with the pod's filter and its supervisor, one without any
filter. In each, a pod process times the same calls, and the legs are
alternated (filtered, unfiltered, filtered, ...); the table gives the median
per call and the ratio filtered/unfiltered:

- kill(peer, 0): mediated (a round trip to the supervisor, which pins the
  target and checks its pea), against the plain kernel call;
- bind(127.0.0.1:0) of a fresh UDP socket (socket+bind+close): mediated
  (the supervisor copies the socket and the address and binds itself);
- bind to a listed port (same, with the pea's port check);
- socket+close and getppid(): not mediated, so they show the cost of the
  filter alone (a BPF search per call).

``supervisor_us`` is the supervisor's own time per mediated call (trio
thread), measured inside the supervisor.
"""

from __future__ import annotations

import statistics

import trio

from tests.pods.seccomp_harness import Pea, fake_pod

CASES = [
    # (name, op kind, peer: "agent" = the other agent's pid, or a port)
    ("kill(peer, 0)", "kill_peer", "agent"),
    ("socket+bind(port 0)+close", "bind_port0", 0),
    ("socket+bind(listed port)+close", "bind_listed", 8080),
    ("socket+close (not mediated)", "socket_only", 0),
    ("getppid (not mediated)", "getppid", 0),
]


async def _measure(filtered: bool, n: int, rounds: int) -> tuple[dict, dict]:
    peas = {"a": Pea("a", connect=True, bind=[8080])}
    out: dict[str, list[float]] = {name: [] for name, _, _ in CASES}
    sup_cost: dict[str, list[float]] = {name: [] for name, _, _ in CASES}
    async with fake_pod(peas, filtered=filtered) as pod:
        a = await pod.agent("a")
        peer = await pod.agent("a")
        for _ in range(rounds):
            for name, kind, arg in CASES:
                arg = peer.vpid if arg == "agent" else arg
                ns0 = pod.supervisor.busy_ns
                calls0 = sum(v for k, v in pod.supervisor.stats.items()
                             if k in ("kill", "bind"))
                per = await a.call("bench", kind, n, arg, timeout=300)
                calls = sum(v for k, v in pod.supervisor.stats.items()
                            if k in ("kill", "bind")) - calls0
                out[name].append(per)
                if calls:
                    sup_cost[name].append((pod.supervisor.busy_ns - ns0) / calls)
    return out, sup_cost


async def _main(n: int, rounds: int):
    filtered: dict[str, list[float]] = {name: [] for name, _, _ in CASES}
    plain: dict[str, list[float]] = {name: [] for name, _, _ in CASES}
    sup: dict[str, list[float]] = {name: [] for name, _, _ in CASES}
    for _ in range(2):  # alternate the legs
        f, s = await _measure(True, n, rounds)
        p, _ = await _measure(False, n, rounds)
        for name in filtered:
            filtered[name] += f[name]
            plain[name] += p[name]
            sup[name] += s[name]
    rows = []
    for name, _, _ in CASES:
        fm, pm = statistics.median(filtered[name]), statistics.median(plain[name])
        rows.append({
            "call": name,
            "filtered_us": fm / 1000,
            "unfiltered_us": pm / 1000,
            "ratio": fm / pm,
            "supervisor_us": statistics.median(sup[name]) / 1000 if sup[name] else None,
        })
    return rows


def run(args) -> dict:
    n = 300 if args.quick else 3000
    rounds = 2 if args.quick else 3
    rows = trio.run(_main, n, rounds)
    return {"rows": rows, "calls_per_leg": n, "rounds": rounds}
