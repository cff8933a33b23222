"""The supervisor's receiving thread (pods/notif_relay.c): it continues a noted
process's repeated alarm() itself, and only that; every other notification is
decided in Python as before, and a listener nobody uses any more is closed.

The relay's condition is attacked directly (a dead note, a reused pid,
another thread), and through a stand-in pod (testbed/seccomp_harness.py),
where the supervisor's own counters show which calls Python decided.
"""

from __future__ import annotations

import errno
import os
import threading

import pytest
import trio

from pod_support import end_supervisor, sleeper_with_pid, wait_for
from testbed.seccomp_harness import Pea, fake_pod


@pytest.mark.parametrize("where", ["relay", "python"])
def test_the_armed_fast_path_takes_only_the_live_noted_process(where):
    # A repeated alarm() of a noted process is continued without the full
    # decision: by the relay's thread (relay.would_continue is its own
    # condition) or, for a call the relay passes on, by
    # Supervisor._armed_already. Either must answer yes for that process's
    # own main thread only: not for a process never noted, not once the
    # noted one died (its pid may come back as a process never noted,
    # which must be decided and noted in Python, or it could cross a
    # transition with its timer armed), not for another thread's tid.
    import subprocess
    from pods.supervisor import Supervisor
    sup = Supervisor("t-armed-fast", None)
    continues = sup._relay.would_continue if where == "relay" else sup._armed_already
    first = subprocess.Popen(["sleep", "30"])
    second = None
    try:
        pid = first.pid
        assert not continues(pid)                          # never noted
        assert sup._arm_host(pid)
        assert continues(pid)
        first.kill()
        first.wait()
        assert not continues(pid)                          # its note is dead
        second = sleeper_with_pid(pid)
        assert not continues(pid), "a reused pid passed for the noted process"
        assert sup._arm_host(pid)                          # the new one is noted
        assert continues(pid)
        me = os.getpid()
        assert sup._arm_host(me)
        tids = []
        t = threading.Thread(target=lambda: tids.append(threading.get_native_id()))
        t.start()
        t.join()
        assert continues(me) and not continues(tids[0])
    finally:
        end_supervisor(sup, first, second)


async def test_python_decides_the_first_alarm_and_the_relay_the_repeats():
    # First alarm(): decided in Python (the caller is noted). The next 50:
    # continued by the relay, never reaching Python. The note stands (a
    # transition would be refused), and a call across peas is still refused
    # by Python right after.
    peas = {"a": Pea("a", connect=True), "b": Pea("b", connect=True)}
    async with fake_pod(peas) as pod:
        sup = pod.supervisor
        a, b = await pod.agent("a"), await pod.agent("b")
        decided, fast = sup.stats["alarm"], sup.fast_alarms
        await a.call("bench", "alarm", 50, 0)               # 1 untimed + 50 timed
        assert sup.stats["alarm"] - decided == 1
        assert sup.fast_alarms - fast == 50
        assert "armed" in (sup.transition_guard(a.host) or "")
        killed = sup.stats["kill"]
        assert await a.call("kill", b.vpid, 0) == -errno.EPERM
        assert sup.stats["kill"] - killed == 1


async def test_an_other_thread_of_a_noted_process_is_decided_in_python():
    # A thread's tid is no key of the notes: its alarm() goes to Python.
    async with fake_pod({"a": Pea("a", connect=True)}) as pod:
        sup = pod.supervisor
        a = await pod.agent("a")
        await a.call("bench", "alarm", 1, 0)                # the process is noted
        decided, fast = sup.stats["alarm"], sup.fast_alarms
        assert await a.call("alarm_in_thread") == 0
        assert sup.stats["alarm"] - decided == 1 and sup.fast_alarms == fast


def _listeners(daemon_pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{daemon_pid}/fd"):
        try:
            if os.readlink(f"/proc/{daemon_pid}/fd/{fd}") == "anon_inode:seccomp notify":
                n += 1
        except OSError:
            pass
    return n


def test_a_finished_exec_s_listener_is_closed(shared_pod):
    # Each `pod exec` brings its own filter, hence its own listener. Once
    # no process uses the filter the kernel reports it hung up, the relay
    # passes that on, and the daemon closes it: no descriptor per exec stays.
    daemon = shared_pod.state()["daemon_pid"]
    before = _listeners(daemon)
    for _ in range(5):
        assert shared_pod.exec("true").returncode == 0
    wait_for(lambda: _listeners(daemon) <= before, what="the execs' listeners to be closed")


def _state(host_pid: int) -> str:
    with open(f"/proc/{host_pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


async def test_a_call_python_has_not_reached_stays_stoppable():
    # A received notification's caller waits killably only
    # (WAIT_KILLABLE_RECV): a SIGSTOP wakes it, and it goes back to sleep
    # uninterruptibly (D) instead of stopping. The relay takes a call only
    # when Python has decided the last, so while Python holds one, the next
    # caller is still in the kernel's queue and stops (T): `pod
    # checkpoint`'s hold depends on it. (Nothing serves the supervisor
    # here: Python never decides the first call.)
    import signal
    from pods.supervisor import Supervisor
    async with fake_pod({"a": Pea("a", connect=True)}, supervise=False) as pod:
        a1, a2, target = await pod.agent("a"), await pod.agent("a"), await pod.agent("a")
        sup = Supervisor("t-relay-window", None)
        listener, pod.listener_taken = pod.listener_taken, None
        sup.add_listener(listener)
        try:
            async with trio.open_nursery() as nursery:
                for agent in (a1, a2):
                    nursery.start_soon(lambda ag=agent: ag.call("kill", target.vpid, 0))
                await trio.sleep(0.5)
                assert sup._relay.counts() == (0, 1)      # one passed to Python
                for agent in (a1, a2):
                    os.kill(agent.host, signal.SIGSTOP)
                await trio.sleep(0.3)
                states = sorted(_state(ag.host) for ag in (a1, a2))
                for agent in (a1, a2):
                    os.kill(agent.host, signal.SIGCONT)
                assert states == ["D", "T"], states
                sup.close()       # the kernel fails both calls (ENOSYS)
        finally:
            sup.close()
