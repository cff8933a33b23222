"""``python -m bench peas``: what separating peas costs a pod process.

One run, two stand-in pods (testbed/seccomp_harness.py) with the same
namespaces, their legs alternated (pod, native, pod, native):

- *pod*: the pod's seccomp filter with its supervisor, and the peas'
  network programs on their cgroups (pods/netbpf.py), as in a real pod;
- *native*: no filter, no programs: the same calls as outside a pod.

Pea a may connect and bind 8080; pea b may not connect. A process of pea a
(and one of pea b for the refused connect) times each call; the table gives
the median per call and the ratio pod/native:

- kill(peer, 0), the peer in the same pea (allowed) or in pea b (refused
  with EPERM in the pod, a plain success natively): mediated by the
  supervisor, one round trip to the daemon; and kill of a pid nobody has
  (ESRCH both ways: Apache signals each CGI it has reaped);
- socket+bind(8080 listed / 9999 not listed)+close, socket+connect(a closed
  port)+close from pea a (allowed: the kernel's ECONNREFUSED) and from pea b
  (refused, EACCES): decided by the kernel's BPF programs, no round trip;
- a Unix socket bound to an abstract name (the supervisor performs the
  bind and records the name: one round trip), and connected to a name of
  its own pea (the kernel's connect_unix program: no round trip);
- alarm(100) by a process the supervisor has already noted (an interval
  timer survives an exec, so its caller may not change pea; Postfix calls
  it at every turn of its event loop): a round trip that needs no decision;
- socket+close and getppid(): neither mediated nor programmed: the cost of
  the filter alone (a BPF search per call).

``supervisor_us`` is the supervisor's own time per mediated call (trio
thread), measured inside the supervisor.
"""

from __future__ import annotations

import statistics

import trio

from testbed.seccomp_harness import Pea, fake_pod

CASES = [
    # (name, op kind, agent, argument: "peer-a"/"peer-b" = that agent's pid, or a port)
    ("kill(peer, 0), same pea (allowed)", "kill_peer", "a", "peer-a"),
    ("kill(peer, 0), other pea (refused)", "kill_peer", "a", "peer-b"),
    ("kill(30000, 0), no such process (ESRCH)", "kill_peer", "a", 30000),
    ("socket+bind(listed)+close (allowed)", "bind_listed", "a", 8080),
    ("socket+bind(unlisted)+close (refused)", "bind_listed", "a", 9999),
    ("socket+connect+close (allowed)", "connect", "a", 9),
    ("socket+connect+close (refused)", "connect", "b", 9),
    ("unix socket+bind(abstract)+close (supervisor binds)", "bind_abstract", "a", 0),
    ("unix socket+connect(abstract, own pea)+close", "connect_abstract", "a", 0),
    ("alarm(100), the caller already noted", "alarm", "a", 0),
    ("socket+close (neither)", "socket_only", "a", 0),
    ("getppid (neither)", "getppid", "a", 0),
]


async def _measure(in_pod: bool, n: int, rounds: int) -> tuple[dict, dict]:
    peas = {"a": Pea("a", connect=True, bind=[8080]), "b": Pea("b", connect=False)}
    out: dict[str, list[float]] = {name: [] for name, *_ in CASES}
    sup_cost: dict[str, list[float]] = {name: [] for name, *_ in CASES}
    async with fake_pod(peas, filtered=in_pod, net_rules=in_pod) as pod:
        agents = {"a": await pod.agent("a"), "b": await pod.agent("b")}
        peers = {"peer-a": await pod.agent("a"), "peer-b": await pod.agent("b")}
        for _ in range(rounds):
            for name, kind, who, arg in CASES:
                arg = peers[arg].vpid if isinstance(arg, str) else arg
                ns0 = pod.supervisor.busy_ns
                calls0 = sum(pod.supervisor.stats.values())
                per = await agents[who].call("bench", kind, n, arg, timeout=300)
                calls = sum(pod.supervisor.stats.values()) - calls0
                out[name].append(per)
                if calls:
                    sup_cost[name].append((pod.supervisor.busy_ns - ns0) / calls)
    return out, sup_cost


async def _main(n: int, rounds: int):
    in_pod: dict[str, list[float]] = {name: [] for name, *_ in CASES}
    native: dict[str, list[float]] = {name: [] for name, *_ in CASES}
    sup: dict[str, list[float]] = {name: [] for name, *_ in CASES}
    for _ in range(2):  # alternate the legs
        f, s = await _measure(True, n, rounds)
        p, _ = await _measure(False, n, rounds)
        for name in in_pod:
            in_pod[name] += f[name]
            native[name] += p[name]
            sup[name] += s[name]
    rows = []
    for name, *_ in CASES:
        fm, pm = statistics.median(in_pod[name]), statistics.median(native[name])
        rows.append({
            "call": name,
            "pod_us": fm / 1000,
            "native_us": pm / 1000,
            "ratio": fm / pm,
            "supervisor_us": statistics.median(sup[name]) / 1000 if sup[name] else None,
        })
    return rows


def run(args) -> dict:
    n = 300 if args.quick else 3000
    rounds = 2 if args.quick else 3
    rows = trio.run(_main, n, rounds)
    return {"rows": rows, "calls_per_leg": n, "rounds": rounds}
