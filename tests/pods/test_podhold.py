"""Holding a pod still (pods/podhold.py): every pod process but pid 1
stopped, and none able to run, while a checkpoint has the peas' BPF
programs off.

Real pods (root, /dev/fuse, namespaces, cgroups); the fixtures stop them
and fail the test if anything was left behind. The attacks are pod
processes that try to keep running or to wake the others while they are
being stopped: SIGCONT to everyone (kill(-1) and each pid), forks,
process groups orphaned on purpose, processes that wake the others and
then stop themselves, threads, a thread group whose leader has exited, a
task that stays in 'D', descriptors running out inside hold(). A counter
each attacker writes in the pod's /tmp (read from the host, in the staging
directory) is the proof that nothing ran: it does not move for half a
second while held. The last test shows the hole a SIGSTOP hold leaves (a
POSIX timer armed with SIGCONT) and that ``Held.verify`` sees it.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import resource
import signal
import time

import pytest

import pod_support
from kernel import cgroup, procfs
from pods.podhold import HoldError, hold

PEAS = '[pea.main.files]\n"/" = "rwx"\n\n[pea.other.files]\n"/" = "rwx"\n\n'
PY = "/usr/bin/python3"


def service(name: str, argv: list[str], **keys) -> str:
    lines = ["[[pod.service]]", f'name = "{name}"', f"exec = {json.dumps(argv)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n\n"


def py_service(name: str, code: str, **keys) -> str:
    return service(name, [PY, "-c", code], **keys)


COUNTER = py_service("count", "import time\n" 'open("/tmp/count", "w").close()\n'
                     "i = 0\nwhile True:\n    i += 1\n"
                     '    with open("/tmp/count.new", "w") as f: f.write(str(i))\n'
                     '    __import__("os").rename("/tmp/count.new", "/tmp/count")\n'
                     "    time.sleep(0.01)\n")
# A shell counter (the brief's): one write every 10 ms, a `sleep` child each time.
SH_COUNTER = service("shcount", ["/bin/sh", "-c",
                                 "i=0; while :; do i=$((i+1)); echo $i > /tmp/shcount; "
                                 "sleep 0.01; done"])


wait_for = functools.partial(pod_support.wait_for, interval=0.02)


def read(pod, name: str) -> str:
    """A file of the pod's /tmp, from the host (the staging directory)."""
    try:
        return (pod.root / "tmp" / name).read_text()
    except FileNotFoundError:
        return ""


def advancing(pod, name: str, timeout=20.0) -> str:
    """Wait until the file changes twice (its writer runs), return it."""
    first = wait_for(lambda: read(pod, name), timeout, f"/tmp/{name}")
    second = wait_for(lambda: (v := read(pod, name)) != first and v, timeout, f"/tmp/{name} to move")
    return wait_for(lambda: (v := read(pod, name)) != second and v, timeout, f"/tmp/{name} to move")


def still(pod, names, seconds=0.5) -> dict:
    """The files do not change for ``seconds``: their writers are held."""
    before = {n: read(pod, n) for n in names}
    time.sleep(seconds)
    after = {n: read(pod, n) for n in names}
    assert after == before, f"moved while held: {before} -> {after}"
    return after


def pid1(pod) -> int:
    """The pod's pid 1: the pod process whose innermost pid is 1."""
    ones = [p for p in cgroup.pids_in(pod.name) if (procfs.nspid(p) or [0])[-1] == 1
            and len(procfs.nspid(p)) > 1]
    assert len(ones) == 1, ones
    assert ones[0] == pod.state()["init_pid"]
    return ones[0]


def keeper(pod) -> int:
    k = pod.state()["keeper_pid"]
    assert k in cgroup.pids_in(pod.name)   # the keeper is in the pod's cgroup too
    return k


STOPPED = {"T", "t"}
HELD = STOPPED | {"Z", "X"}


def thread_states(pid: int) -> dict[int, str]:
    """tid -> state letter of every thread of ``pid``, read here rather than
    through the module under test."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                stat = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        out[int(tid)] = stat[stat.rindex(b")") + 2:][:1].decode()
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def states(pid: int) -> set[str]:
    """The state letters of every thread of ``pid`` (empty: gone)."""
    return set(thread_states(pid).values())


def stopped_in(pod) -> dict[int, set[str]]:
    """Pod processes with a stopped thread ('T', 't')."""
    out = {}
    for p in cgroup.pids_in(pod.name):
        s = states(p)
        if s & STOPPED:
            out[p] = s
    return out


def assert_all_held(pod, held, keep):
    """Every pod process but ``keep`` is held (pinned) and every thread of
    it is stopped or ended, the pids listed now included."""
    pids = set(cgroup.pids_in(pod.name)) - set(keep)
    assert pids <= set(held.pidfds), (pids, held.pidfds)
    for p in pids:
        assert states(p) <= HELD, (p, states(p))
    assert held.verify() == []


@pytest.fixture
def timed():
    """Each test bounded: SIGALRM turns a hang into a failure."""
    def expired(*_):
        raise TimeoutError("test took more than 120 s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------ the property

def test_a_held_counter_stops_and_goes_on_after_release(pod_factory, timed):
    pod = pod_factory.start(peas=PEAS + SH_COUNTER + COUNTER)
    advancing(pod, "shcount")
    advancing(pod, "count")
    one = pid1(pod)
    t0 = time.monotonic()
    held = hold(pod.name, keep={one})
    took = time.monotonic() - t0
    try:
        assert took < 1.0, took
        assert_all_held(pod, held, {one})
        still(pod, ["shcount", "count"])
        assert held.verify() == []
    finally:
        held.release()
    assert held.pidfds == {}
    advancing(pod, "shcount", timeout=5)
    advancing(pod, "count", timeout=5)
    assert stopped_in(pod) == {}


FORKER = r"""
import os, random, signal, time
signal.signal(signal.SIGHUP, signal.SIG_IGN)   # orphaned groups get SIGHUP then SIGCONT
MAX = 24

def others():
    me = os.getpid()
    return [int(n) for n in os.listdir("/proc") if n.isdigit() and int(n) not in (1, me)]

def run(depth):
    n = 0
    while True:
        n += 1
        pids = others()
        for p in pids:                       # SIGCONT to every other process, one by one
            try:
                os.kill(p, signal.SIGCONT)
            except OSError:
                pass
        if n % 10 == 0:
            try:
                os.kill(-1, signal.SIGCONT)  # and to all at once (the supervisor does it)
            except OSError:
                pass
        with open("/tmp/attack", "a") as f:
            f.write(f"{os.getpid()} {n}\n")
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        if len(pids) < MAX:
            if os.fork() == 0:
                if random.random() < 0.5:
                    os.setpgid(0, 0)         # a group of its own: orphaned when we exit
                run(depth + 1)
        if depth and random.random() < 0.05:
            os._exit(0)                      # orphans our children: pid 1 reaps them

run(0)
"""


def test_attack_forking_processes_that_sigcont_everyone_are_held(pod_factory, timed):
    """Every attacker SIGCONTs every other pod process (each pid, and
    kill(-1)) in a loop, forks new attackers up to 24, and exits now and
    then, orphaning process groups of its children (the kernel's own
    SIGCONT to stopped members). hold() converges within its timeout, and
    then nothing runs: the attack log does not grow."""
    pod = pod_factory.start(peas=PEAS + py_service("attack", FORKER) + COUNTER)
    wait_for(lambda: len(cgroup.pids_in(pod.name)) > 15, what="the attackers to multiply")
    advancing(pod, "attack")
    one = pid1(pod)
    for attempt in range(3):
        t0 = time.monotonic()
        held = hold(pod.name, keep={one}, timeout=5.0)
        took = time.monotonic() - t0
        try:
            assert took < 5.0
            assert len(held.pidfds) > 15
            assert_all_held(pod, held, {one})
            still(pod, ["attack", "count"])
            assert held.verify() == []
        finally:
            held.release()
        assert stopped_in(pod) == {}
        advancing(pod, "attack", timeout=5)
    advancing(pod, "count", timeout=5)
    # Many short holds: a process forked between a pass's listing and its
    # parent's stop, or woken by an exit mid-pass, shows within 20 ms.
    for attempt in range(40):
        held = hold(pod.name, keep={one}, timeout=5.0)
        try:
            time.sleep(0.02)
            assert held.verify() == [], attempt
        finally:
            held.release()
        time.sleep(0.03)


PINGPONG = r"""
import os, signal, time
# Four processes: a hub that never stops itself and three that wake every
# other process, write, then stop themselves. At any instant most of them
# read 'T' while one runs and wakes the rest: a hold that trusts one pass
# reading "all stopped" returns while one of them runs. (The hub keeps
# them going: without it, all four may stop themselves at once.)
hub = True
for i in range(3):
    if os.fork() == 0:
        hub = False
        break
me = os.getpid()
n = 0
while True:
    n += 1
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) not in (1, me):
            try:
                os.kill(int(p), signal.SIGCONT)
            except OSError:
                pass
    with open("/tmp/pingpong", "a") as f:
        f.write(f"{me} {n}\n")
    if hub:
        time.sleep(0.001)
    else:
        os.kill(me, signal.SIGSTOP)
"""


def test_attack_processes_that_wake_the_others_then_stop_themselves(pod_factory, timed):
    pod = pod_factory.start(peas=PEAS + py_service("pingpong", PINGPONG))
    advancing(pod, "pingpong")
    one = pid1(pod)
    for attempt in range(10):
        held = hold(pod.name, keep={one}, timeout=5.0)
        try:
            assert_all_held(pod, held, {one})
            still(pod, ["pingpong"], seconds=0.3)
            assert held.verify() == []
        finally:
            held.release()
        advancing(pod, "pingpong", timeout=5)


THREADS = r"""
import ctypes, hashlib, os, sys, threading, time
def spin():                      # in C, without the GIL: really on a CPU
    data = b"x" * (1 << 20)
    while True:
        hashlib.sha256(data).digest()
def count(name):
    i = 0
    while True:
        i += 1
        with open(f"/tmp/{name}.new", "w") as f:
            f.write(str(i))
        os.rename(f"/tmp/{name}.new", f"/tmp/{name}")
        time.sleep(0.01)
for _ in range(4):
    threading.Thread(target=spin, daemon=True).start()
threading.Thread(target=count, args=(sys.argv[1],), daemon=True).start()
if sys.argv[2] == "leader-exits":
    time.sleep(0.3)
    ctypes.CDLL(None).pthread_exit(None)   # the leader reads 'Z'; the others run on
while True:
    time.sleep(1)
"""


def test_every_thread_is_stopped(pod_factory, timed):
    """A process of 4 threads on a CPU and one writing a counter; and the
    same whose leader thread has exited (its /proc/PID/stat reads 'Z' while
    the other threads run): every thread of both is stopped."""
    pod = pod_factory.start(peas=PEAS
                            + service("threads", [PY, "-c", THREADS, "threads", "stay"])
                            + service("zthreads", [PY, "-c", THREADS, "zthreads", "leader-exits"]))
    advancing(pod, "threads")
    advancing(pod, "zthreads")
    spinners = {}
    for p in cgroup.pids_in(pod.name):
        t = thread_states(p)
        if len(t) >= 5:
            spinners[p] = t
    assert len(spinners) == 2, spinners
    zombie_leader = [p for p, t in spinners.items() if t[p] == "Z"]
    assert len(zombie_leader) == 1, spinners
    assert {s for tid, s in spinners[zombie_leader[0]].items() if tid != zombie_leader[0]} & {"R", "S"}
    one = pid1(pod)
    held = hold(pod.name, keep={one})
    try:
        for p in spinners:
            t = thread_states(p)
            assert len(t) == 6, t          # the leader, 4 spinners, the counter
            assert set(t.values()) <= {"T", "Z"}, t
            assert list(t.values()).count("T") >= 5
        assert_all_held(pod, held, {one})
        still(pod, ["threads", "zthreads"])
    finally:
        held.release()
    advancing(pod, "threads", timeout=5)
    advancing(pod, "zthreads", timeout=5)


# ------------------------------------------------------------------ keep

def test_pid1_is_kept_running_and_reaps(pod_factory, timed):
    """keep={pid 1}: pid 1 is never stopped (it is not pinned, its state is
    never 'T' during the hold), it reaps a held process killed from the
    host meanwhile, and `pod exec` works during and after the hold. The
    keeper, also in the pod's cgroup, is held unless kept."""
    pod = pod_factory.start(peas=PEAS + COUNTER)
    advancing(pod, "count")
    r = pod.exec("/bin/sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!")
    assert r.returncode == 0, r.stderr
    vpid = int(r.stdout)
    orphan = next(p for p in cgroup.pids_in(pod.name) if (procfs.nspid(p) or [0])[-1] == vpid)
    one = pid1(pod)
    assert procfs.ppid(orphan) == one            # daemonized: pid 1's child
    held = hold(pod.name, keep={one})
    try:
        assert one not in held.pidfds
        assert keeper(pod) in held.pidfds
        assert orphan in held.pidfds and states(orphan) == {"T"}
        seen = set()
        for _ in range(25):
            seen |= states(one)
            time.sleep(0.01)
        assert seen and not seen & STOPPED, seen
        # pid 1 reaps while the pod is held: a held process killed from the
        # host (SIGKILL ends a stopped task) is gone, not a zombie.
        signal.pidfd_send_signal(held.pidfds[orphan], signal.SIGKILL)
        wait_for(lambda: not os.path.exists(f"/proc/{orphan}"), 5, "pid 1 to reap")
        assert held.verify() == []
        r = pod.exec("/bin/echo", "during")
        assert (r.returncode, r.stdout) == (0, "during\n"), r.stderr
        assert held.verify() == []
        still(pod, ["count"], seconds=0.3)
    finally:
        held.release()
    r = pod.exec("/bin/echo", "after")
    assert (r.returncode, r.stdout) == (0, "after\n"), r.stderr
    advancing(pod, "count", timeout=5)


# ------------------------------------------------------------------ failures

VFORK_IN_D = r"""
import os, sys, threading, time
os.mkfifo("/tmp/fifo")
# posix_spawn is a vfork: the calling thread waits, killable only ('D'),
# until the child execs. The child first opens the fifo, which blocks (no
# writer). SIGSTOP stops the child; the waiting thread never stops.
def spawn():
    os.posix_spawn("/bin/true", ["true"], {},
                   file_actions=[(os.POSIX_SPAWN_OPEN, 3, "/tmp/fifo", os.O_RDONLY, 0)])
if sys.argv[1] == "leader":
    spawn()
else:                 # another thread waits; the leader goes on (and stops)
    threading.Thread(target=spawn).start()
    while True:
        time.sleep(0.01)
"""


@pytest.mark.parametrize("who", ["leader", "thread"])
def test_a_process_that_stays_in_D_fails_the_hold_and_nothing_stays_stopped(pod_factory, timed, who):
    """A real task in 'D' for good: the hold waits for it up to its
    timeout, then fails naming it, and resumes what it stopped. With
    ``thread``, only a thread other than the leader is in 'D' (the
    leader's /proc/PID/stat reads 'T' once stopped)."""
    pod = pod_factory.start(peas=PEAS + COUNTER + service("vfork", [PY, "-c", VFORK_IN_D, who]))
    advancing(pod, "count")

    def spawner():
        return [p for p in cgroup.pids_in(pod.name)
                if "posix_spawn" in cmdline(p) and "D" in states(p)
                and len(thread_states(p)) == (1 if who == "leader" else 2)]
    stuck = wait_for(spawner, what="a process with a thread in D")
    assert len(stuck) == 1
    time.sleep(0.1)
    assert "D" in states(stuck[0])
    one = pid1(pod)
    t0 = time.monotonic()
    with pytest.raises(HoldError) as caught:
        hold(pod.name, keep={one}, timeout=1.0)
    took = time.monotonic() - t0
    assert 1.0 <= took < 2.0, took
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"pod {pod.name}: 1 process(es) did not stop within 1 s")
    assert message.endswith(f": {stuck[0]} D"), message
    assert stopped_in(pod) == {}
    advancing(pod, "count", timeout=5)
    # Once its child gets a writer and execs, the thread returns and a hold succeeds.
    r = pod.exec("/bin/sh", "-c", "echo > /tmp/fifo")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: "D" not in states(stuck[0]), 5, "the vfork to end")
    with hold(pod.name, keep={one}) as held:
        assert_all_held(pod, held, {one})


def test_a_timeout_too_short_releases_everything(pod_factory, timed):
    """With no time to converge (timeout 0: one pass), hold raises, its
    message names every process it could not call held, and no pod process
    is left stopped."""
    pod = pod_factory.start(peas=PEAS + py_service("attack", FORKER) + COUNTER)
    wait_for(lambda: len(cgroup.pids_in(pod.name)) > 10, what="the attackers to multiply")
    one = pid1(pod)
    for timeout in (0, 0.0001, 0.003):
        with pytest.raises(HoldError) as caught:
            hold(pod.name, keep={one}, timeout=timeout)
        message = str(caught.value)
        assert "\n" not in message
        named = message.split(": ")[-1].split(", ")
        assert named and all(p.split()[0].isdigit() and len(p.split()[1]) == 1 for p in named)
        # Nothing stopped by hold() is left stopped (an attacker may stop
        # itself: give them a moment to be woken by the others).
        wait_for(lambda: stopped_in(pod) == {}, 5, "no stopped process")
        advancing(pod, "count", timeout=5)


def test_a_deadline_between_two_identical_passes_names_every_process(pod_factory, timed,
                                                                     monkeypatch):
    """The deadline falls after two identical passes with every process
    stopped, one pass short of the three that prove the hold (CI saw this
    under load: "0 process(es) did not stop ...: " and nothing named).
    HoldError names every process not yet proven still, with its state.
    The clock is the one thing faked: it passes the deadline exactly at
    that pass, which load reaches only by chance."""
    from pods import podhold
    pod = pod_factory.start(peas=PEAS + SH_COUNTER + COUNTER)
    advancing(pod, "count")
    one = pid1(pod)
    snaps = []
    real_pass = podhold.Held._pass

    def recording(self):
        snaps.append(real_pass(self))
        return snaps[-1]

    def repeated_all_held() -> bool:
        return (len(snaps) >= 2 and snaps[-1] == snaps[-2]
                and all(podhold._not_held(t) is None for t in snaps[-1].values()))

    class Clock:
        monotonic = staticmethod(lambda: 1e9 if repeated_all_held() else 0.0)
        sleep = staticmethod(time.sleep)

    monkeypatch.setattr(podhold.Held, "_pass", recording)
    monkeypatch.setattr(podhold, "time", Clock)
    with pytest.raises(HoldError) as caught:
        hold(pod.name, keep={one}, timeout=1.0)
    message = str(caught.value)
    last = snaps[-1]
    assert last and repeated_all_held()
    named = dict(p.split() for p in message.split(": ")[-1].split(", "))
    assert {int(p) for p in named} == set(last), message
    assert set(named.values()) <= HELD, message
    assert message.startswith(f"pod {pod.name}: {len(last)} process(es) stopped but were "
                              f"not seen still for {podhold.STABLE_PASSES} passes within 1 s"), \
        message
    wait_for(lambda: stopped_in(pod) == {}, 5, "no stopped process")
    advancing(pod, "count", timeout=5)


def test_an_error_inside_hold_resumes_what_it_stopped(pod_factory, timed):
    """hold() runs out of descriptors half-way (RLIMIT_NOFILE lowered: a
    pidfd per process): the error comes out as it is, never as a hold
    that skipped processes, and every process it had stopped runs again."""
    pod = pod_factory.start(peas=PEAS + py_service("attack", FORKER) + COUNTER)
    wait_for(lambda: len(cgroup.pids_in(pod.name)) > 15, what="the attackers to multiply")
    advancing(pod, "count")
    one = pid1(pod)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 8, hard))
    try:
        with pytest.raises(OSError) as caught:
            hold(pod.name, keep={one})
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert caught.value.errno == errno.EMFILE
    assert len(os.listdir("/proc/self/fd")) <= in_use + 1     # its pidfds closed
    assert stopped_in(pod) == {}
    advancing(pod, "count", timeout=5)
    advancing(pod, "attack", timeout=5)


# ------------------------------------------------------------------ release, empty

def test_release_is_idempotent_and_an_empty_pod_gives_an_empty_hold(pod_factory, timed):
    with pytest.raises(HoldError, match="^pod nosuchpod: no cgroup "):
        hold("nosuchpod")
    pod = pod_factory.start(peas=PEAS)
    one, k = pid1(pod), keeper(pod)
    assert set(cgroup.pids_in(pod.name)) == {one, k}
    held = hold(pod.name, keep={one, k}, timeout=0)
    assert held.pidfds == {}
    assert held.verify() == []
    held.release()
    held.release()
    # pid 1 alone kept: the keeper (our code as well) is the one held.
    held = hold(pod.name, keep={one})
    assert set(held.pidfds) == {k}
    assert states(k) == {"T"}
    fds = list(held.pidfds.values())
    held.release()
    assert held.pidfds == {}
    wait_for(lambda: states(k) == {"S"}, 5, "the keeper to wait again")
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)                          # closed
    held.release()
    r = pod.exec("/bin/echo", "ok")
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr


def test_a_process_the_pod_stopped_itself_stays_stopped(pod_factory, timed):
    """Job control: a process stopped by the pod before the hold is not
    woken by release; the others are."""
    pod = pod_factory.start(peas=PEAS + COUNTER)
    # No descriptor of the exec's: a stopped process holding its stdout
    # would keep `pod exec` waiting for the end of the output.
    r = pod.exec("/bin/sh", "-c", "exec </dev/null >/dev/null 2>&1; "
                 "sleep 600 & echo $! > /tmp/parked; kill -STOP $!")
    assert r.returncode == 0, r.stderr
    vpid = int(read(pod, "parked"))
    parked = next(p for p in cgroup.pids_in(pod.name) if (procfs.nspid(p) or [0])[-1] == vpid)
    wait_for(lambda: states(parked) == {"T"}, 5, "the parked process to stop")
    advancing(pod, "count")
    one = pid1(pod)
    with hold(pod.name, keep={one}) as held:
        assert held.already_stopped == {parked}
        assert_all_held(pod, held, {one})
    advancing(pod, "count", timeout=5)
    time.sleep(0.2)
    assert states(parked) == {"T"}
    assert set(stopped_in(pod)) == {parked}


# ------------------------------------------------------------------ the hole

TIMER = r"""
import ctypes, os, signal, time
libc = ctypes.CDLL(None, use_errno=True)
class sigevent(ctypes.Structure):
    _fields_ = [("value", ctypes.c_void_p), ("signo", ctypes.c_int),
                ("notify", ctypes.c_int), ("pad", ctypes.c_int * 12)]
class timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]
class itimerspec(ctypes.Structure):
    _fields_ = [("interval", timespec), ("value", timespec)]
timer = ctypes.c_void_p()
# With SIGCONT's default action (ignore, after continuing) the kernel parks
# the timer after its first expiry (an ignored timer signal is not
# generated again, kernel/signal.c); a handler keeps it firing.
signal.signal(signal.SIGCONT, lambda *_: None)
# SIGEV_SIGNAL (0), SIGCONT, on CLOCK_MONOTONIC (1): the kernel sends this
# process SIGCONT every 300 ms, stopped or not.
assert libc.timer_create(1, ctypes.byref(sigevent(None, signal.SIGCONT, 0)), ctypes.byref(timer)) == 0
period = timespec(0, 300_000_000)
assert libc.timer_settime(timer, 0, ctypes.byref(itimerspec(period, period)), None) == 0
i = 0
while True:
    i += 1
    with open("/tmp/timer", "a") as f:
        f.write(f"{i}\n")
    time.sleep(0.01)
"""


def test_hole_a_posix_timer_sigcont_wakes_a_held_process_and_verify_sees_it(pod_factory, timed):
    """Not a property: the hole SIGSTOP leaves. A pod process arms a POSIX
    timer (timer_create is not mediated) that sends it SIGCONT every 300 ms.
    The kernel delivers it to the stopped process, which runs again while
    the pod is held. hold() converges between two expiries; verify() then
    names the process once it has woken. (A checkpoint that checks the
    hold only after the dump learns of it too late: see the report that
    came with pods/podhold.py.)"""
    pod = pod_factory.start(peas=PEAS + py_service("timer", TIMER) + COUNTER)
    advancing(pod, "timer")
    one = pid1(pod)
    attacker = next(p for p in cgroup.pids_in(pod.name)
                    if "timer_create" in cmdline(p))
    held = hold(pod.name, keep={one})
    try:
        assert held.verify() == [] or held.verify() == [attacker]
        before = read(pod, "timer")
        woke = wait_for(lambda: held.verify(), 2, "the timer to wake the attacker")
        assert woke == [attacker]
        wait_for(lambda: read(pod, "timer") != before, 2, "the attacker to write while held")
        still(pod, ["count"], seconds=0.3)          # the others stay held
    finally:
        held.release()
