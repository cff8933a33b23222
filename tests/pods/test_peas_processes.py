"""Peas and processes (SECURITY.md, "Processes"): a process acts only on processes of its
own pea; across peas every such call fails with EPERM; wait() on a child in
another pea works; kill(-1) and process groups reach the caller's pea only.

Run in a stand-in pod (testbed/seccomp_harness.py): agents are pod
processes (pod root, all capabilities in the pod's user namespace), moved
between pea cgroups by the test.
"""

from __future__ import annotations

import errno
import os
import signal

import trio

from testbed.seccomp_harness import Pea, fake_pod

PEAS = {"a": Pea("a", connect=True), "b": Pea("b", connect=True)}

# call -> the result within a pea (rc, errno); None: rc >= 0 and errno 0
WITHIN = {
    "kill": (0, 0), "tkill": (0, 0), "tgkill": (0, 0),
    "rt_sigqueueinfo": (0, 0), "rt_tgsigqueueinfo": (0, 0),
    "process_vm_readv": (16, 0), "process_vm_writev": (16, 0),
    "kcmp": None, "prlimit64": (0, 0), "setpriority": (0, 0),
    "sched_setaffinity": (0, 0), "sched_setscheduler": (0, 0), "sched_setparam": (0, 0),
    "sched_setattr": (0, 0), "ioprio_set": (0, 0), "migrate_pages": None,
    "move_pages": (0, 0), "get_robust_list": (0, 0), "fcntl_setown": (0, 0),
    "pidfd_open": (0, 0), "ptrace": (0, 0),
}


def state(host: int) -> str:
    """A process's state letter as the host sees it; "gone" once reaped."""
    try:
        with open(f"/proc/{host}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return line.split()[1]
    except OSError:
        pass
    return "gone"


def dead(host: int) -> bool:
    return state(host) in ("Z", "X", "gone")


async def wait_dead(host: int, timeout=5.0) -> bool:
    with trio.move_on_after(timeout):
        while not dead(host):
            await trio.sleep(0.01)
    return dead(host)


def tracer_of(host: int) -> int:
    with open(f"/proc/{host}/status") as f:
        for line in f:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    return -1


async def test_every_process_call_works_within_a_pea():
    async with fake_pod(PEAS) as pod:
        a1 = await pod.agent("a")
        a2 = await pod.agent("a")
        got = {}
        for name in WITHIN:           # ptrace last: it leaves a2 traced
            got[name] = await a1.call("proc_call", name, a2.vpid)
        bad = {}
        for name, want in WITHIN.items():
            rc, e = got[name]
            if (want is None and (rc < 0 or e)) or (want is not None and (rc, e) != want):
                bad[name] = (rc, errno.errorcode.get(e, e))
        assert bad == {}
        # the same calls on the caller itself are not even mediated where
        # the argument says "self" (pid 0), and work when named by pid
        assert await a1.call("proc_call", "kill", a1.vpid) == (0, 0)
        assert tracer_of(a2.host) == a1.host


async def test_every_process_call_fails_across_peas():
    async with fake_pod(PEAS) as pod:
        a1 = await pod.agent("a")
        b1 = await pod.agent("b")
        bad = {}
        for name in WITHIN:
            res = await a1.call("proc_call", name, b1.vpid)
            if res != (-1, errno.EPERM):
                bad[name] = (res[0], errno.errorcode.get(res[1], res[1]))
        assert bad == {}
        assert tracer_of(b1.host) == 0
        assert await b1.call("getpid") == b1.vpid
        # and the other way round
        assert await b1.call("proc_call", "kill", a1.vpid) == (-1, errno.EPERM)
        assert await b1.call("proc_call", "ptrace", a1.vpid) == (-1, errno.EPERM)


async def test_a_nonexistent_pid_is_esrch_not_eperm():
    async with fake_pod(PEAS) as pod:
        a1 = await pod.agent("a")
        assert await a1.call("proc_call", "kill", 30000) == (-1, errno.ESRCH)
        assert await a1.call("proc_call", "ptrace", 30000) == (-1, errno.ESRCH)


async def test_pidfd_taken_in_the_pea_stops_working_when_the_target_leaves_it():
    """A pidfd is a descriptor, not a register: the supervisor decides on
    its own copy of it, at the time of the call."""
    async with fake_pod(PEAS) as pod:
        a1 = await pod.agent("a")
        a2 = await pod.agent("a")
        assert await a1.call("proc_call", "pidfd_open", a2.vpid) == (0, 0)
        assert await a1.call("proc_call", "pidfd_send_signal", a2.vpid) == (0, 0)
        assert await a1.call("proc_call", "pidfd_getfd", a2.vpid) == (0, 0)
        a2.move("b")
        assert await a1.call("proc_call", "pidfd_send_signal_kill", a2.vpid) == (-1, errno.EPERM)
        assert await a1.call("proc_call", "pidfd_getfd", a2.vpid) == (-1, errno.EPERM)
        assert await a2.call("getpid") == a2.vpid
        a2.move("a")
        assert await a1.call("proc_call", "pidfd_send_signal", a2.vpid) == (0, 0)


async def test_parent_waits_for_its_child_in_another_pea():
    async with fake_pod(PEAS) as pod:
        a1 = await pod.agent("a")
        child = await a1.call("sleeper")
        host = pod.host_pid(child)
        pod_child_pea = "b"
        from kernel import cgroup
        cgroup.join(host, pod.name, pod_child_pea)
        assert await a1.call("kill", child, signal.SIGTERM) == -errno.EPERM
        assert state(host) != "Z"
        os.kill(host, signal.SIGKILL)          # the child dies of something else
        assert await a1.call("waitpid", child) == (child, -signal.SIGKILL)


async def test_kill_minus_one_spares_other_peas():
    async with fake_pod(PEAS) as pod:
        a1 = await pod.agent("a")
        a2 = await pod.agent("a")
        b1 = await pod.agent("b")
        b2 = await pod.agent("b")
        ca = await a1.call("sleeper")
        cb = await a1.call("sleeper")
        ca_host, cb_host = pod.host_pid(ca), pod.host_pid(cb)
        from kernel import cgroup
        cgroup.join(cb_host, pod.name, "b")
        assert await a1.call("kill", -1, signal.SIGKILL) == 0
        assert await wait_dead(a2.host)
        assert await wait_dead(ca_host)
        await trio.sleep(0.1)
        for p in (b1.host, b2.host, cb_host, pod.p2, a1.host):
            assert not dead(p), p
        assert await b1.call("getpid") == b1.vpid
        # and from pea b: only b's processes (a1 survives)
        assert await b1.call("kill", -1, signal.SIGKILL) == 0
        assert await wait_dead(b2.host)
        assert await wait_dead(cb_host)
        assert not dead(a1.host) and not dead(pod.p2)


async def test_kill_minus_one_keeps_unix_permissions_within_the_pea():
    async with fake_pod(PEAS) as pod:
        a1 = await pod.agent("a")
        a2 = await pod.agent("a")
        user = await pod.agent("a")
        assert await user.call("become", 1000) == 0
        # no process of uid 1000 but itself: nothing may be signalled
        assert await user.call("kill", -1, signal.SIGKILL) == 0
        await trio.sleep(0.1)
        assert not dead(a1.host) and not dead(a2.host)
        assert await user.call("kill", a1.vpid, signal.SIGKILL) == -errno.EPERM


async def test_sigcont_within_the_session_passes_the_uid_rule():
    """The kernel lets any process continue a stopped process of its own
    session whatever the uids: the supervisor's group signals do too."""
    async with fake_pod(PEAS) as pod:
        a2 = await pod.agent("a")
        b1 = await pod.agent("b")
        user = await pod.agent("a")
        assert await user.call("become", 1000) == 0
        os.kill(a2.host, signal.SIGSTOP)
        os.kill(b1.host, signal.SIGSTOP)
        try:
            with trio.fail_after(5):
                while state(a2.host) != "T" or state(b1.host) != "T":
                    await trio.sleep(0.01)
            assert await user.call("kill", -1, signal.SIGCONT) == 0
            with trio.fail_after(5):
                while state(a2.host) == "T":
                    await trio.sleep(0.01)
            await trio.sleep(0.1)
            assert state(b1.host) == "T"          # another pea: untouched
        finally:
            os.kill(b1.host, signal.SIGCONT)
            os.kill(a2.host, signal.SIGCONT)


async def test_process_group_spanning_peas_is_signalled_in_the_callers_pea_only():
    async with fake_pod(PEAS) as pod:
        a1 = await pod.agent("a")
        c1 = await a1.call("sleeper", True)           # leader of a new group
        c2 = await a1.call("sleeper")
        assert await a1.call("setpgid", c2, c1) == 0
        c1_host, c2_host = pod.host_pid(c1), pod.host_pid(c2)
        from kernel import cgroup
        cgroup.join(c2_host, pod.name, "b")
        assert await a1.call("kill", -c1, signal.SIGKILL) == 0
        assert await wait_dead(c1_host)
        await trio.sleep(0.1)
        assert not dead(c2_host)
        # only members of another pea left: EPERM, as for a refused group
        assert await a1.call("kill", -c1, signal.SIGKILL) == -errno.EPERM
        assert not dead(c2_host)
        # kill(0): the caller's own group, its pea only
        b1 = await pod.agent("b")
        assert await b1.call("ignore", signal.SIGUSR2) == 0
        assert await a1.call("ignore", signal.SIGUSR2) == 0
        assert await a1.call("kill", 0, signal.SIGUSR2) == 0
        assert not dead(b1.host) and not dead(a1.host)


async def test_setpriority_on_a_group_or_user():
    async with fake_pod(PEAS) as pod:
        a1 = await pod.agent("a")
        await pod.agent("b")
        # PRIO_USER reaches every process of a uid, in every pea: refused
        assert await a1.call("syscall", 141, 2, 0, 5) == (-1, errno.EPERM)
        # PRIO_PGRP of the pod's group (init, a1 and b's agent): spans peas
        assert await a1.call("syscall", 141, 1, 0, 5) == (-1, errno.EPERM)
        c1 = await a1.call("sleeper", True)
        assert await a1.call("syscall", 141, 1, c1, 5) == (0, 0)


async def test_a_reaped_child_is_esrch_and_a_live_one_still_found():
    """Apache signals each CGI it has already reaped (SIGTERM, then kill 0):
    the supervisor answers from the kernel's translation of the number
    (NS_GET_PID_FROM_PIDNS), not a scan of the pod, and must still say
    ESRCH for the reaped child and find a live process of the pea, and
    refuse one of another pea, by the same path; tkill (a thread by its
    tid alone) too."""
    async with fake_pod(PEAS) as pod:
        a1 = await pod.agent("a")
        a2 = await pod.agent("a")
        b1 = await pod.agent("b")
        child = await a1.call("sleeper")
        assert await a1.call("proc_call", "kill", child) == (0, 0)
        host = pod.host_pid(child)
        os.kill(host, signal.SIGKILL)
        assert await wait_dead(host)
        assert (await a1.call("waitpid", child))[0] == child
        for call in ("kill", "tkill"):
            assert await a1.call("proc_call", call, child) == (-1, errno.ESRCH), call
            assert await a1.call("proc_call", call, a2.vpid) == (0, 0), call
            assert await a1.call("proc_call", call, b1.vpid) == (-1, errno.EPERM), call


async def _zombie_children(pod):
    """An agent in pea a and one in pea b, each with a child killed and not
    reaped yet: (a1, b1, a1's child, b1's child, their host pids)."""
    a1 = await pod.agent("a")
    b1 = await pod.agent("b")
    child = await a1.call("sleeper")
    other = await b1.call("sleeper")
    host, other_host = pod.host_pid(child), pod.host_pid(other)
    os.kill(host, signal.SIGKILL)
    os.kill(other_host, signal.SIGKILL)
    assert await wait_dead(host) and await wait_dead(other_host)
    assert state(host) == "Z" and state(other_host) == "Z"   # not reaped yet
    return a1, b1, child, other, host, other_host


async def test_an_exiting_child_is_answered_without_a_scan_of_the_pod():
    """Apache kills each CGI while it exits, before it is reaped. An exiting
    task has dropped its namespaces, so its pidfd names no pid namespace,
    and the supervisor verifies the task the kernel's translation names
    another way (seccomp_procs, _pin_exiting). Natively a zombie may still
    be signalled: kill and tkill return 0 and deliver nothing. So they do
    here within the pea, and a zombie of another pea is EPERM, as a live
    process of it is; never after a scan of every pod process's /proc
    status (a pod of a few hundred processes paid that scan twice per CGI
    request). Before, every one of these was ESRCH."""
    async with fake_pod(PEAS) as pod:
        a1, b1, child, other, host, other_host = await _zombie_children(pod)
        procs = pod.supervisor.procs
        scans = []
        real_scan = procs._scan

        def counted_scan():
            scans.append(1)
            return real_scan()

        procs._scan = counted_scan
        for call in ("kill", "tkill"):
            assert await a1.call("proc_call", call, child) == (0, 0), call
            assert await a1.call("proc_call", call, other) == (-1, errno.EPERM), call
        assert scans == [], "the supervisor scanned the pod for a task the kernel had named"
        assert (await b1.call("waitpid", other))[0] == other
        assert (await a1.call("waitpid", child))[0] == child


async def test_an_exiting_task_is_pinned_only_if_the_number_still_names_it():
    """_pin_exiting's proof, step by step, on real zombies: a host pid that
    the caller's number does not name (the number handed to another task
    between the kernel's translation and the pidfd's open: here a zombie
    of another pea) is not pinned; the one it names is, with its pea; once
    reaped, nothing is."""
    async with fake_pod(PEAS) as pod:
        a1, b1, child, other, host, other_host = await _zombie_children(pod)
        caller = pod.supervisor.procs.caller(pod.host_pid(a1.vpid))
        try:
            procs = pod.supervisor.procs
            assert procs.pin(host, caller, child) is None        # what _pin_exiting is for
            assert procs._pin_exiting(other_host, caller, child, False) is None
            t = procs._pin_exiting(host, caller, child, False)
            assert t is not None and (t.host, t.pea) == (host, "a")
            t.close()
            assert (await a1.call("waitpid", child))[0] == child
            assert procs._pin_exiting(host, caller, child, False) is None
            assert (await b1.call("waitpid", other))[0] == other
        finally:
            caller.close()
