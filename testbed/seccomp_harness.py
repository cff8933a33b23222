"""A stand-in pod for the seccomp tests and bench/peas.py, independent of the pod daemon.

    async with fake_pod(peas={"a": Pea(...), "b": Pea(...)}) as pod:
        a1 = await pod.agent("a")          # a process in pea a, in the pod
        await a1.call("kill", b1.vpid, 0)  # runs in the agent, returns (rc, errno)

Layout: the test process (host root, trio) runs the Supervisor. It forks P1,
which unshares user, pid and net namespaces (uid 0 of the pod maps to an
unprivileged host range, so pod root has capabilities only inside) and forks
P2, pid 1 of the new pid namespace. P2 brings up loopback, installs the pod's
filter (pods.seccomp.install), and the test takes the listener out of P2
with pidfd_getfd, as the tagger does. P2 then forks agents on request; each
agent executes named operations (the OPS below) sent by the test over its
own SOCK_SEQPACKET socket, and answers with the result. Pea membership is the
pea cgroups of kernel/cgroup.py (the test moves agents with cgroup.join).

Everything an agent runs is already imported before the fork: agents run as
an unprivileged host uid and must not need to read host files.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import mmap
import os
import pickle
import random
import signal
import socket
import struct
import threading
import time

import trio

from kernel import cgroup
from pods import seccomp
from pods import netbpf
from pods.supervisor import Supervisor

libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
libc.syscall.restype = ctypes.c_long

CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000


class Pea:
    """The part of rules.Pea the supervisor reads."""

    def __init__(self, name, connect=False, bind=()):
        self.name, self.connect, self.bind = name, connect, frozenset(bind)


class Policy:
    def __init__(self, peas):
        self.peas = peas

    def pea(self, name):
        return self.peas[name]


# ------------------------------------------------------------ agent side
def sc(nr, *args):
    """A raw system call: (return value, errno)."""
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return rc, (ctypes.get_errno() if rc < 0 else 0)


def _errno_of(fn, *a):
    try:
        r = fn(*a)
        return r if r is not None else 0
    except OSError as e:
        return -e.errno


def op_syscall(nr, *args):
    return sc(nr, *args)


def op_getpid():
    return os.getpid()


def op_kill(pid, sig):
    return _errno_of(os.kill, pid, sig)


_sleepers = []


def op_sleeper(new_pgrp=False):
    """Fork a child that sleeps; returns its pid (pod-virtual)."""
    pid = os.fork()
    if pid == 0:
        try:
            if new_pgrp:
                os.setpgid(0, 0)
            while True:
                signal.pause()
        finally:
            os._exit(0)
    if new_pgrp:
        os.setpgid(pid, pid)   # in both, so the group exists when we return
    _sleepers.append(pid)
    return pid


def op_setpgid(pid, pgid):
    return _errno_of(os.setpgid, pid, pgid)


def op_getpgid(pid):
    return _errno_of(os.getpgid, pid)


def op_waitpid(pid, nohang=False):
    try:
        wpid, status = os.waitpid(pid, os.WNOHANG if nohang else 0)
    except OSError as e:
        return -e.errno
    return (wpid, os.waitstatus_to_exitcode(status) if wpid else None)


def op_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


_socks = {}
_all_socks = []


def op_bind(family, port, typ=socket.SOCK_STREAM, listen=False):
    s = socket.socket(family, typ)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    try:
        s.bind((host, port))
        if listen:
            s.listen(8)
    except OSError as e:
        s.close()
        return -e.errno
    _socks[s.getsockname()[1]] = s
    _all_socks.append(s)   # keep every bound socket open
    return s.getsockname()[1]


def op_connect(family, port, typ=socket.SOCK_STREAM):
    s = socket.socket(family, typ)
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    try:
        s.connect((host, port))
        return 0
    except OSError as e:
        return -e.errno
    finally:
        s.close()


def op_udp_sendto(port, data=b"x"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        return s.sendto(data, ("127.0.0.1", port))
    except OSError as e:
        return -e.errno
    finally:
        s.close()


def op_udp_sendmsg(port, data=b"x", with_addr=True):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if with_addr:
            return s.sendmsg([data], [], 0, ("127.0.0.1", port))
        return s.sendmsg([data])
    except OSError as e:
        return -e.errno
    finally:
        s.close()


def op_unix_pair_sendmsg():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        n = a.sendmsg([b"hello"])
        return n, b.recv(10)
    except OSError as e:
        return -e.errno
    finally:
        a.close()
        b.close()


_conns = {}


def op_tcp_connect_keep(port, rcvbuf=0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        s.connect(("127.0.0.1", port))
    except OSError as e:
        s.close()
        return -e.errno
    _conns[s.getsockname()[1]] = s
    return s.getsockname()[1]


def op_recv(key, n=100, timeout=5.0):
    s = _conns[key]
    s.settimeout(timeout)
    try:
        return s.recv(n)
    except OSError as e:
        return -e.errno


def op_recv_all(key, n, timeout=30.0):
    """Read until ``n`` bytes or a pause of 1 s; returns the count."""
    s = _conns[key]
    got = 0
    end = time.monotonic() + timeout
    s.settimeout(1.0)
    while got < n and time.monotonic() < end:
        try:
            chunk = s.recv(1 << 16)
        except socket.timeout:
            break
        if not chunk:
            break
        got += len(chunk)
    return got


def op_accept_sendmsg(port, data, sndbuf=0):
    """Accept one connection on the listener bound to ``port`` and answer
    with sendmsg without an address: (bytes sent or -errno). ``data``: bytes,
    or a size (that many bytes)."""
    if isinstance(data, int):
        data = b"x" * data
    s = _socks[port]
    s.settimeout(5.0)
    c, _ = s.accept()
    c.settimeout(None)
    if sndbuf:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    _conns[("acc", port)] = c
    try:
        return c.sendmsg([data])
    except OSError as e:
        return -e.errno


def op_udp_sendmmsg(port, with_addr=True, n=2, connect=None):
    """sendmmsg of ``n`` one-byte datagrams (raw call: Python has no wrapper):
    (messages sent or -errno, msg_len of each)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if (not with_addr) if connect is None else connect:
            s.connect(("127.0.0.1", port))
        addr = ctypes.create_string_buffer(16)
        struct.pack_into("<H", addr, 0, socket.AF_INET)
        struct.pack_into("!H4s", addr, 2, port, socket.inet_aton("127.0.0.1"))
        data = ctypes.create_string_buffer(b"m", 1)
        iov = ctypes.create_string_buffer(struct.pack("QQ", ctypes.addressof(data), 1))
        vec = ctypes.create_string_buffer(64 * n)
        for i in range(n):
            struct.pack_into("QI4xQQQQi4xI4x", vec, 64 * i,
                             ctypes.addressof(addr) if with_addr else 0, 16 if with_addr else 0,
                             ctypes.addressof(iov), 1, 0, 0, 0, 0)
        rc, e = sc(307, s.fileno(), ctypes.addressof(vec), n, 0)
        if rc < 0:
            return -e, []
        return rc, [struct.unpack_from("I", vec, 64 * i + 56)[0] for i in range(n)]
    finally:
        s.close()


def op_family_bind(family):
    """bind() a socket of another family: AF_PACKET (on lo) or AF_NETLINK."""
    if family == socket.AF_PACKET:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        addr = ("lo", 0x0800)
    else:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)   # NETLINK_ROUTE
        addr = (0, 0)
    try:
        s.bind(addr)
        return 0
    except OSError as e:
        return -e.errno
    finally:
        s.close()


def op_udp_recv(port, timeout=2.0):
    s = _socks[port]
    s.settimeout(timeout)
    try:
        return s.recv(100)
    except OSError as e:
        return -e.errno


def op_bind_race(allowed, refused, rounds):
    """One thread flips the port in a sockaddr between ``allowed`` and
    ``refused`` while this thread binds with it. Returns the ports that
    ended up bound (must never contain ``refused``) and the errno counts."""
    buf = ctypes.create_string_buffer(16)
    struct.pack_into("!HH4s", buf, 0, 0, allowed, socket.inet_aton("127.0.0.1"))
    buf[0:2] = struct.pack("<H", socket.AF_INET)
    stop = threading.Event()

    def flip():
        a = struct.pack("!H", allowed)
        r = struct.pack("!H", refused)
        while not stop.is_set():
            ctypes.memmove(ctypes.addressof(buf) + 2, r, 2)
            ctypes.memmove(ctypes.addressof(buf) + 2, a, 2)

    t = threading.Thread(target=flip, daemon=True)
    t.start()
    bound, errs = [], {}
    try:
        for _ in range(rounds):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            rc, e = sc(49, s.fileno(), ctypes.addressof(buf), 16)
            if rc == 0:
                bound.append(s.getsockname()[1])
            else:
                errs[e] = errs.get(e, 0) + 1
            s.close()
    finally:
        stop.set()
        t.join()
    return sorted(set(bound)), errs, len(bound)


_got = [0]


def op_count_signals():
    """Count SIGUSR1 from now on; returns nothing."""
    _got[0] = 0

    def h(*_):
        _got[0] += 1
    signal.signal(signal.SIGUSR1, h)
    return 0


def op_signals_received():
    return _got[0]


def op_signal_loop(targets, seconds, sig, max_rounds=10**9):
    """Send ``sig`` round-robin to ``targets`` for ``seconds``: per target,
    {0: successes, errno: failures}."""
    end = time.monotonic() + seconds
    res = {t: {} for t in targets}
    rounds = 0
    while time.monotonic() < end and rounds < max_rounds:
        rounds += 1
        for t in targets:
            try:
                os.kill(t, sig)
                e = 0
            except OSError as exc:
                e = exc.errno
            res[t][e] = res[t].get(e, 0) + 1
    return res


# A buffer at the same address in every agent (they are forked from one
# image): process_vm_readv/writev have a valid remote address to use.
_PROBE = ctypes.create_string_buffer(b"peapod-probe\0\0\0", 16)
_pidfds = {}


def op_proc_call(name, pid, tid=None):
    """One mediated process call on ``pid`` with valid arguments: (rc, errno)."""
    b = ctypes.create_string_buffer(256)
    bp = ctypes.addressof(b)
    tid = tid or pid
    if name == "kill":
        return sc(62, pid, 0)
    if name == "tkill":
        return sc(200, tid, 0)
    if name == "tgkill":
        return sc(234, pid, tid, 0)
    if name in ("rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        struct.pack_into("iii", b, 0, 0, 0, -1)            # si_code SI_QUEUE
        if name == "rt_sigqueueinfo":
            return sc(129, pid, 0, bp)
        return sc(297, pid, tid, 0, bp)
    if name in ("process_vm_readv", "process_vm_writev"):
        probe = ctypes.addressof(_PROBE)
        local = bp + 64 if name == "process_vm_readv" else probe
        struct.pack_into("QQQQ", b, 0, local, 16, probe, 16)
        return sc(310 if name == "process_vm_readv" else 311, pid, bp, 1, bp + 16, 1, 0)
    if name == "kcmp":
        return sc(312, pid, os.getpid(), 1, 0, 0)           # KCMP_VM
    if name == "prlimit64":
        return sc(302, pid, 7, 0, bp)                       # read RLIMIT_NOFILE
    if name == "setpriority":
        return sc(141, 0, pid, 5)
    if name == "sched_setaffinity":
        b[0:8] = b"\xff" * 8
        return sc(203, pid, 8, bp)
    if name == "sched_setscheduler":
        return sc(144, pid, 0, bp)
    if name == "sched_setparam":
        return sc(142, pid, bp)
    if name == "sched_setattr":
        struct.pack_into("IIQiI", b, 0, 48, 0, 0, 10, 0)   # SCHED_OTHER, nice 10
        return sc(314, pid, bp, 0)
    if name == "ioprio_set":
        return sc(251, 1, pid, (2 << 13) | 4)
    if name == "migrate_pages":
        b[0:8] = struct.pack("Q", 1)
        return sc(256, pid, 64, bp, bp)
    if name == "move_pages":
        return sc(279, pid, 0, 0, 0, 0, 0)
    if name == "get_robust_list":
        return sc(274, pid, bp, bp + 8)
    if name == "fcntl_setown":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            return sc(72, s.fileno(), 8, pid)
        finally:
            s.close()
    if name == "pidfd_open":
        rc, e = sc(434, pid, 0)
        if rc >= 0:
            _pidfds[pid] = rc
            return 0, 0
        return rc, e
    if name == "pidfd_send_signal":
        return sc(424, _pidfds[pid], 0, 0, 0)
    if name == "pidfd_send_signal_kill":
        return sc(424, _pidfds[pid], signal.SIGKILL, 0, 0)
    if name == "pidfd_getfd":
        rc, e = sc(438, _pidfds[pid], 0, 0)
        if rc >= 0:
            os.close(rc)
            return 0, 0
        return rc, e
    if name == "ptrace":
        return sc(101, 0x4206, pid, 0, 0)                    # PTRACE_SEIZE
    raise ValueError(name)


def op_bench(kind, n, peer=0):
    """Time ``n`` calls of one kind; returns ns per call."""
    # Refused calls are timed too: each op swallows its OSError.
    if kind == "kill_peer":
        def one():
            try:
                os.kill(peer, 0)
            except OSError:
                pass
    elif kind == "connect":
        def one():
            s = socket.socket()
            try:
                s.connect(("127.0.0.1", peer))
            except OSError:
                pass
            s.close()
    elif kind == "getppid":
        one = os.getppid
    elif kind == "bind_port0":
        def one():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.close()
    elif kind == "bind_listed":
        def one():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", peer))
            except OSError:
                pass
            s.close()
    elif kind == "bind_abstract":
        # An abstract name: the supervisor binds it (one round trip).
        names = iter(range(1 << 62))

        def one():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.bind(f"\0bench-{os.getpid()}-{next(names)}")
            s.close()
    elif kind == "connect_abstract":
        # To a name of the caller's own pea: the kernel's connect_unix program.
        if not _bench_server:
            server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            server.bind(f"\0bench-srv-{os.getpid()}")
            _bench_server.append(server)

        def one():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.connect(f"\0bench-srv-{os.getpid()}")
            s.close()
    elif kind == "socket_only":
        def one():
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
    elif kind == "alarm":
        # The first call notes the caller (the full path); the timed ones
        # find it noted (Supervisor._armed_already). Cancelled after.
        def one():
            signal.alarm(100)
    else:
        raise ValueError(kind)
    one()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        one()
    per = (time.perf_counter_ns() - t0) / n
    if kind == "alarm":
        signal.alarm(0)
    return per


def op_alarm_in_thread():
    """alarm(100) from a second thread of the agent, then cancelled: a tid
    that is not the noted process's tgid."""
    errs = []

    def arm():
        try:
            signal.alarm(100)
        except OSError as e:
            errs.append(e.errno)

    t = threading.Thread(target=arm)
    t.start()
    t.join()
    signal.alarm(0)
    return errs[0] if errs else 0


def op_ignore(sig):
    signal.signal(sig, signal.SIG_IGN)
    return 0


def op_become(uid):
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    return 0


_keep = []
_bench_server: list = []     # the abstract-name server of "connect_abstract", bound once


def op_cstring(text):
    """A NUL-terminated copy of ``text`` in the agent's memory: its address."""
    buf = ctypes.create_string_buffer(text.encode())
    _keep.append(buf)
    return ctypes.addressof(buf)


def op_fork_and_thread():
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    _, st = os.waitpid(pid, 0)
    return 0 if os.waitstatus_to_exitcode(st) == 7 else -1


def op_int80_child():
    """A child that makes a system call through the i386 ABI: its fate."""

    pid = os.fork()
    if pid == 0:
        m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        m.write(bytes([0xB8, 0x14, 0, 0, 0, 0xCD, 0x80, 0xC3]))   # mov eax,20; int 0x80; ret
        fn = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))
        fn()
        os._exit(0)
    _, st = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(st)


def op_exit(code=0):
    os._exit(code)


OPS = {k[3:]: v for k, v in globals().items() if k.startswith("op_")}


def _agent_loop(sock: socket.socket) -> None:
    sock.send(pickle.dumps(("hello", os.getpid())))
    while True:
        try:
            msg = sock.recv(1 << 16)
        except InterruptedError:
            continue
        if not msg:
            os._exit(0)
        name, args, kwargs = pickle.loads(msg)
        try:
            res = ("ok", OPS[name](*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - report everything to the test
            res = ("exc", repr(e))
        sock.send(pickle.dumps(res))


def _init_loop(ctl: socket.socket) -> None:
    """P2: pid 1 of the fake pod. Forks an agent per received socket."""
    os.setsid()   # the pod's own session and process group, as a pod's init has
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # reap agents automatically
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(ctl, 16, 1)
        except InterruptedError:
            continue
        if not msg:
            os._exit(0)
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            ctl.close()
            _agent_loop(socket.socket(fileno=fds[0]))
            os._exit(0)
        os.close(fds[0])


def _lo_up() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ifr = struct.pack("16sH22x", b"lo", 0)
    flags = struct.unpack_from("16sH", fcntl.ioctl(s, 0x8913, ifr))[1]   # SIOCGIFFLAGS
    fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"lo", flags | 1))     # SIOCSIFFLAGS IFF_UP
    s.close()


# ------------------------------------------------------------ test side
class Agent:
    def __init__(self, pod, sock, vpid, host, pea):
        self.pod, self.sock, self.vpid, self.host, self.pea = pod, sock, vpid, host, pea

    async def call(self, name, *args, timeout=30, **kwargs):
        with trio.fail_after(timeout):
            await self.sock.send(pickle.dumps((name, args, kwargs)))
            data = await self.sock.recv(1 << 16)
        if not data:
            raise EOFError(f"agent {self.vpid} died during {name}")
        kind, val = pickle.loads(data)
        if kind != "ok":
            raise RuntimeError(f"agent {self.vpid} {name}: {val}")
        return val

    def move(self, pea):
        cgroup.join(self.host, self.pod.name, pea)
        self.pea = pea


class FakePod:
    def __init__(self, peas: dict, name: str | None = None, filtered: bool = True,
                 net_rules: bool = True):
        self.filtered = filtered
        self.net_rules = net_rules
        self.name = name or f"sctest{os.getpid()}-{random.randrange(1 << 30):x}"
        self.policy = Policy(peas)
        self.supervisor = Supervisor(self.name, self.policy)
        self.p1 = self.p2 = None
        self.listener_taken = None
        self.agents: list[Agent] = []
        self.net_queue: int | None = None
        base = 1_000_000 + random.randrange(1000) * 65536
        self.uid_base = base

    # --------------------------------------------------------- start
    def start(self) -> int:
        """Fork P1/P2 and return a copy of P2's listener."""
        cgroup.ensure_peas(self.name, self.policy.peas)
        # The peas' network rules, as the daemon attaches them (no host
        # addresses: the stand-in pod has loopback only).
        self.net_queue = netbpf.create_queue()
        self.unix_names = netbpf.create_unix_names()
        ids = netbpf.unix_kfunc_ids()
        for i, (name, pea) in enumerate(self.policy.peas.items() if self.net_rules else ()):
            netbpf.attach_pea(str(cgroup.pea_cgroup(self.name, name)),
                              netbpf.PeaNet(i, pea.connect, pea.bind, False), [], self.net_queue,
                              self.unix_names, ids)
        self.supervisor.unix_names = self.unix_names
        self.supervisor.pea_index = {name: i for i, name in enumerate(self.policy.peas)}
        self.ctl, child_ctl = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        rep_r, rep_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # P1
            try:
                os.close(rep_r)
                os.close(go_w)
                self.ctl.close()
                if libc.unshare(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET) != 0:
                    os.write(rep_w, f"E unshare {os.strerror(ctypes.get_errno())}\n".encode())
                    os._exit(1)
                os.write(rep_w, b"U\n")
                if os.read(go_r, 1) != b"g":
                    os._exit(1)
                p2 = os.fork()
                if p2 == 0:
                    os.setresgid(0, 0, 0)
                    os.setresuid(0, 0, 0)
                    # A uid change made us non-dumpable, and our memory was
                    # made in the host's user namespace: undo what an exec
                    # into the pod would have undone, so that same-uid ptrace
                    # access inside the pod works as it does in a real pod.
                    libc.prctl(4, 1, 0, 0, 0)   # PR_SET_DUMPABLE
                    _lo_up()
                    fd = seccomp.install(notify=True) if self.filtered else -1
                    os.write(rep_w, f"L {fd}\n".encode())
                    if os.read(go_r, 1) != b"g":
                        os._exit(1)
                    if fd >= 0:
                        os.close(fd)
                    os.close(go_r)
                    os.close(rep_w)
                    _init_loop(child_ctl)
                    os._exit(0)
                os.write(rep_w, f"P {p2}\n".encode())
                _, st = os.waitpid(p2, 0)
                os._exit(0)
            except BaseException as e:  # noqa: BLE001
                try:
                    os.write(rep_w, f"E {e!r}\n".encode())
                finally:
                    os._exit(1)
        os.close(rep_w)
        os.close(go_r)
        child_ctl.close()
        self.p1 = pid
        rep = os.fdopen(rep_r, "rb", buffering=0)
        try:
            assert self._line(rep) == "U", "P1 could not unshare its namespaces"
            cgroup.join(pid, self.name, next(iter(self.policy.peas)))
            with open(f"/proc/{pid}/uid_map", "w") as f:
                f.write(f"0 {self.uid_base} 65536\n")
            with open(f"/proc/{pid}/gid_map", "w") as f:
                f.write(f"0 {self.uid_base} 65536\n")
            os.write(go_w, b"g")
            # "P PID" (from P1, after its fork) and "L FD" (from P2, once its
            # filter is in) share the pipe and race: take them in either order.
            lines = {}
            for _ in range(2):
                line = self._line(rep)
                assert line[:2] in ("P ", "L ") and line[0] not in lines, \
                    f"the fake pod's init failed: {line}"
                lines[line[0]] = line[2:]
            self.p2 = int(lines["P"])
            listener = seccomp.pidfd_take(self.p2, int(lines["L"])) if self.filtered else None
            os.write(go_w, b"g")
        finally:
            rep.close()
            os.close(go_w)
        return listener

    @staticmethod
    def _line(f) -> str:
        out = b""
        while not out.endswith(b"\n"):
            c = f.read(1)
            if not c:
                break
            out += c
        return out.decode().strip()

    async def agent(self, pea: str | None = None) -> Agent:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        socket.send_fds(self.ctl, [b"A"], [theirs.fileno()])
        theirs.close()
        tsock = trio.socket.from_stdlib_socket(mine)
        with trio.fail_after(10):
            kind, vpid = pickle.loads(await tsock.recv(1 << 16))
        host = self.host_pid(vpid)
        a = Agent(self, tsock, vpid, host, None)
        first = next(iter(self.policy.peas))
        a.pea = first
        if pea is not None and pea != first:
            a.move(pea)
        self.agents.append(a)
        return a

    def host_pid(self, vpid: int) -> int:
        for host in cgroup.pids_in(self.name):
            try:
                with open(f"/proc/{host}/status") as f:
                    for line in f:
                        if line.startswith("NSpid:"):
                            ns = line.split()[1:]
                            if int(ns[-1]) == vpid and len(ns) >= 2:
                                return host
            except OSError:
                pass
        raise LookupError(f"no process with pod pid {vpid}")

    # --------------------------------------------------------- stop
    def stop(self) -> None:
        for a in self.agents:
            with contextlib.suppress(Exception):
                a.sock.close()
        with contextlib.suppress(Exception):
            self.ctl.close()
        for pid in (self.p2, self.p1):
            if pid:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if self.p1:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.p1, 0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = cgroup.pids_in(self.name)
            for p in left:
                with contextlib.suppress(OSError):
                    os.kill(p, signal.SIGKILL)
            if not left:
                break
            time.sleep(0.02)
        cgroup.remove_pod(self.name)
        if self.net_queue is not None:
            os.close(self.net_queue)
            self.net_queue = None
        if getattr(self, "unix_names", None) is not None:
            os.close(self.unix_names)
            self.unix_names = None


@contextlib.asynccontextmanager
async def fake_pod(peas: dict, supervise: bool = True, filtered: bool = True,
                   net_rules: bool = True):
    pod = FakePod(peas, filtered=filtered, net_rules=net_rules)
    try:
        listener = pod.start()
        if not supervise or not filtered:
            pod.listener_taken = listener
            yield pod
            return
        async with trio.open_nursery() as nursery:
            pod.supervisor.add_listener(listener)
            nursery.start_soon(pod.supervisor.serve)
            try:
                yield pod
            finally:
                pod.supervisor.close()
    finally:
        pod.supervisor.close()
        if pod.listener_taken is not None:
            with contextlib.suppress(OSError):
                os.close(pod.listener_taken)
        pod.stop()


def default_peas():
    return {"a": Pea("a", connect=True, bind=[8080]),
            "b": Pea("b", connect=False, bind=[8081])}
