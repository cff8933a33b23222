"""The pod's seccomp filter: what a pod's super-user may not do, and what is
decided by the supervisor.

A pod's root holds every capability, but only in the pod's user namespace.
The kernel already refuses most host-wide operations to a namespaced root;
this filter closes the rest, and the attack surface of calls no service needs,
with EPERM (the error a process that lacks a privilege expects). It also
routes the calls that act on another process, or on the network, to the
pod's supervisor (pods/supervisor.py) through a seccomp notification
listener; every other call pays only the filter itself (a binary search over
the system call number, JIT-compiled, a few dozen nanoseconds).

``install(notify=True)`` is the last step of the tagger before exec:
prctl(PR_SET_NO_NEW_PRIVS) (required to install a filter without
CAP_SYS_ADMIN in the init namespace, and it keeps a setuid program from
gaining privileges the filter does not know about), then
seccomp(SECCOMP_SET_MODE_FILTER, NEW_LISTENER | WAIT_KILLABLE_RECV).
The filter is inherited by every child and survives exec; it cannot be
removed. Once the supervisor has received a notification, the caller waits
killably only (WAIT_KILLABLE_RECV): an ordinary signal cannot abandon a call
that the supervisor may already be performing (a bind done twice).

Refused with EPERM, and what each refusal prevents:

- Architecture: a call through any ABI but x86_64 kills the process (the
  numbers below mean other calls on i386), and x32 calls (number with bit
  0x40000000) are refused: they would reach the same kernel code under
  numbers the filter does not check.
- Kernel code: init_module, finit_module, delete_module (and the obsolete
  create_module, query_module, get_kernel_syms): loading or unloading code
  into the host kernel. bpf: loading programs into the host kernel (and
  reading maps of other programs). perf_event_open: host-wide performance
  counters and a large, often-exploited surface. lookup_dcookie, syslog:
  host profiling and the host kernel log.
- Host state: reboot, kexec_load, kexec_file_load (restart or replace the
  host kernel); settimeofday, clock_settime, clock_adjtime, adjtimex (the
  clock is host-wide; adjtimex is refused even for reading, which is simpler
  than parsing its mode word from memory); swapon, swapoff; quotactl,
  quotactl_fd; acct (process accounting to a file, host-wide); iopl, ioperm
  (raw I/O ports); vhangup.
- Handles that bypass paths: open_by_handle_at, name_to_handle_at (open any
  inode of a file system by its handle, bypassing PeaFS and the pod's root:
  the "shocker" container escape).
- Attack surface without a need in a service: io_uring_setup/enter/register
  (also: io_uring performs connect, sendmsg, ... in kernel threads that the
  filter never sees); keyctl, add_key, request_key (kernel keyrings are not
  namespaced); userfaultfd (pauses kernel code at a chosen page: the classic
  aid for winning kernel races); modify_ldt (CPU emulation).
- Mounts: mount, umount2, the new mount API (fsopen, fsconfig, fsmount,
  fspick, open_tree, open_tree_attr, move_mount, mount_setattr), and
  pivot_root. The pod's mounts are made by the daemon and pid 1 before the
  filter exists. All peas of a pod share one mount namespace, so a mount
  made by pod root in one pea changes what every pea sees: a bind of a
  directory the pea may write over /etc feeds planted files to the other
  peas, and a tmpfs holds programs PeaFS never sees executed. (A new mount
  namespace, unshare(CLONE_NEWNS), is then harmless: nothing can be
  mounted in it either.)
- Nested user namespaces: clone or unshare with CLONE_NEWUSER. A new user
  namespace gives its creator every capability again, over new namespaces,
  and opens kernel code reserved for capable users (Docker refuses it too).
  clone3 returns ENOSYS (its flags are in memory, where the filter cannot
  read them; C libraries fall back to clone).
- Shared descriptor tables between processes: clone with CLONE_FILES but not
  CLONE_THREAD. The supervisor relies on "a single-threaded caller's
  descriptor table cannot change while its call waits" (see the supervisor).
- Devices: mknod and mknodat of a character or block device (mode argument,
  a register).
- personality except PER_LINUX, PER_LINUX32, UNAME26 and the query: the
  others change the address-space layout or the ABI (READ_IMPLIES_EXEC,
  ADDR_NO_RANDOMIZE, ...).
- SCTP sockets (IPPROTO_SCTP, or SOCK_SEQPACKET on AF_INET/AF_INET6, whose
  default protocol is SCTP): SCTP binds and connects through setsockopt
  (bindx, connectx), a path the peas' bind and connect rules (cgroup BPF at
  bind() and connect(), pods/netbpf.py) are not shown.
- Socket families other than AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK
  (socket, and socketpair but AF_UNIX) fail with EAFNOSUPPORT: the peas'
  network rules judge IP addresses only, and a family like AF_VSOCK, AF_TIPC
  or AF_CAN reaches past them (raw and packet sockets also need
  CAP_NET_RAW, which no pod process has over the pod's network).
- prctl(PR_SET_PDEATHSIG), alarm (but alarm(0)) and setitimer are mediated
  (noted, then let through: see the supervisor's "signals armed before a
  transition"); other prctl options are allowed.
- fcntl(F_SETSIG) of SIGCONT or SIGKILL: a signal the kernel would send
  on an event from outside the pod, which could wake or kill a process the
  daemon holds stopped for a checkpoint (pods/podhold.py).
- fcntl(F_SETOWN_EX), ioctl(FIOSETOWN, SIOCSPGRP): set the process that
  receives SIGIO/SIGURG (a signal to another process) through a structure in
  memory; F_SETOWN (a register) is mediated instead. ioctl(TIOCSTI,
  TIOCLINUX): typing into, or controlling, a terminal.
- Obsolete calls: nfsservctl, uselib, ustat, sysfs, _sysctl, afs_syscall,
  tuxcall, security, vserver, getpmsg, putpmsg.
- process_madvise: acts on another process through a pidfd (a descriptor,
  which another thread can swap after a check), and no service needs it.

Mediated (SECCOMP_RET_USER_NOTIF, decided by pods/supervisor.py): every call
that names another process by pid, process group or pidfd; see
docs/SECURITY.md for the list and why it is complete. Calls whose pid
argument is 0 (the caller itself) are allowed by the filter directly where
the kernel reads 0 as "self": prlimit64, sched_set*, migrate_pages,
move_pages, get_robust_list, setpriority(PRIO_PROCESS, 0),
ioprio_set(IOPRIO_WHO_PROCESS, 0). Network calls are not mediated: bind,
connect and sends are judged in the kernel (pods/netbpf.py).
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import struct

from pods.seccomp_syscalls import (
    AF_INET, AF_INET6, AF_NETLINK, AF_UNIX, AUDIT_ARCH_X86_64, CLONE_FILES, CLONE_NEWUSER, CLONE_THREAD,
    F_SETOWN, F_SETOWN_EX, F_SETSIG, FIOSETOWN, IOPRIO_WHO_PROCESS, IPPROTO_SCTP, NR,
    PR_SET_PDEATHSIG, PRIO_PROCESS, S_IFBLK, S_IFCHR, S_IFMT, SAFE_PERSONALITIES, SIOCSPGRP,
    SOCK_SEQPACKET, TIOCLINUX, TIOCSTI, X32_SYSCALL_BIT,
)

# --------------------------------------------------------------- constants
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_USER_NOTIF = 0x7FC00000
RET_ALLOW = 0x7FFF0000

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_GET_NOTIF_SIZES = 3
FLAG_NEW_LISTENER = 1 << 3
FLAG_WAIT_KILLABLE_RECV = 1 << 5
PR_SET_NO_NEW_PRIVS = 38
_SYS_seccomp = 317

# classic BPF opcodes
_LD_W_ABS = 0x20
_ALU_AND_K = 0x54
_JMP_JA = 0x05
_JMP_JEQ_K = 0x15
_JMP_JGE_K = 0x35
_JMP_JSET_K = 0x45
_RET_K = 0x06

# offsets in struct seccomp_data (little endian: an argument's low word first)
_OFF_NR = 0
_OFF_ARCH = 4


def _arg_lo(i: int) -> int:
    return 16 + 8 * i


def _arg_hi(i: int) -> int:
    return 16 + 8 * i + 4


EPERM = RET_ERRNO | errno.EPERM
EAFNOSUPPORT = RET_ERRNO | errno.EAFNOSUPPORT
NOTIFY = RET_USER_NOTIF
ALLOW = RET_ALLOW

# Calls refused outright (see the module docstring for why).
REFUSED = (
    "init_module", "finit_module", "delete_module", "create_module", "query_module",
    "get_kernel_syms", "kexec_load", "kexec_file_load", "reboot",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "swapon", "swapoff", "quotactl", "quotactl_fd", "acct",
    "open_by_handle_at", "name_to_handle_at",
    "bpf", "perf_event_open", "lookup_dcookie", "syslog",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "keyctl", "add_key", "request_key", "userfaultfd",
    "mount", "umount2",
    "fsopen", "fsconfig", "fsmount", "fspick", "open_tree", "open_tree_attr",
    "move_mount", "mount_setattr", "pivot_root",
    "iopl", "ioperm", "modify_ldt", "vhangup",
    "nfsservctl", "uselib", "ustat", "sysfs", "_sysctl", "afs_syscall", "tuxcall",
    "security", "vserver", "getpmsg", "putpmsg",
    "process_madvise",
)

# Calls always sent to the supervisor.
MEDIATED = (
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
    "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "ptrace",
    "process_vm_readv", "process_vm_writev", "kcmp",
)

# Calls sent to the supervisor unless their first argument (a pid) is 0: self.
MEDIATED_UNLESS_SELF = (
    "prlimit64", "sched_setaffinity", "sched_setscheduler", "sched_setparam",
    "sched_setattr", "migrate_pages", "move_pages", "get_robust_list",
)


class SeccompUnavailable(OSError):
    """The kernel refused the filter; the message names the missing feature."""


# ------------------------------------------------------------ assembler
class _Prog:
    """A tiny classic-BPF assembler: conditional jumps only skip 0 or 1
    instruction; longer jumps are `ja` to a label (32-bit offsets), so no
    jt/jf offset can overflow its 8 bits however large the program grows."""

    def __init__(self):
        self.ins: list[tuple] = []  # (code, jt, jf, k) with k maybe a label
        self.labels: dict[str, int] = {}
        self._n = 0

    def label(self, name: str | None = None) -> str:
        if name is None:
            self._n += 1
            name = f"L{self._n}"
        return name

    def here(self, name: str) -> None:
        self.labels[name] = len(self.ins)

    def ld(self, off: int) -> None:
        self.ins.append((_LD_W_ABS, 0, 0, off))

    def and_(self, k: int) -> None:
        self.ins.append((_ALU_AND_K, 0, 0, k))

    def ret(self, k: int) -> None:
        self.ins.append((_RET_K, 0, 0, k))

    def ja(self, label: str) -> None:
        self.ins.append((_JMP_JA, 0, 0, label))

    def if_then(self, op: int, k: int, action) -> None:
        """if (A op k) then `action` (a return value, or a label to jump to)."""
        self.ins.append((op, 0, 1, k))
        if isinstance(action, str):
            self.ja(action)
        else:
            self.ret(action)

    def unless_then(self, op: int, k: int, action) -> None:
        """if not (A op k) then `action`."""
        self.ins.append((op, 1, 0, k))
        if isinstance(action, str):
            self.ja(action)
        else:
            self.ret(action)

    def assemble(self, notify_ret: int) -> bytes:
        out = bytearray()
        for pc, (code, jt, jf, k) in enumerate(self.ins):
            if code == _RET_K and k == NOTIFY:
                k = notify_ret
            if code == _JMP_JA:
                k = self.labels[k] - pc - 1
                assert k >= 0, "backward jump"
            out += struct.pack("<HBBI", code, jt, jf, k & 0xFFFFFFFF)
        return bytes(out)


def _build(notify_ret: int) -> bytes:
    p = _Prog()
    # Architecture first: the numbers below mean something else on i386.
    p.ld(_OFF_ARCH)
    p.unless_then(_JMP_JEQ_K, AUDIT_ARCH_X86_64, RET_KILL_PROCESS)
    p.ld(_OFF_NR)
    p.if_then(_JMP_JGE_K, X32_SYSCALL_BIT, EPERM)

    actions: dict[int, object] = {}
    for name in REFUSED:
        actions[NR[name]] = EPERM
    for name in MEDIATED:
        actions[NR[name]] = NOTIFY
    actions[NR["clone3"]] = RET_ERRNO | errno.ENOSYS
    blocks: list[tuple[str, callable]] = []

    def block(names, emit):
        lab = p.label()
        for n in names:
            actions[NR[n]] = lab
        blocks.append((lab, emit))

    def unless_self(arg=0):
        def emit():
            # pid_t is an int: the kernel reads only the low word, so do we.
            p.ld(_arg_lo(arg))
            p.if_then(_JMP_JEQ_K, 0, ALLOW)
            p.ret(NOTIFY)
        return emit

    block(MEDIATED_UNLESS_SELF, unless_self(0))

    def which_who(self_which):
        def emit():
            p.ld(_arg_lo(0))
            p.unless_then(_JMP_JEQ_K, self_which, NOTIFY)
            p.ld(_arg_lo(1))
            p.if_then(_JMP_JEQ_K, 0, ALLOW)
            p.ret(NOTIFY)
        return emit

    block(["setpriority"], which_who(PRIO_PROCESS))
    block(["ioprio_set"], which_who(IOPRIO_WHO_PROCESS))

    def clone():
        p.ld(_arg_lo(0))
        p.if_then(_JMP_JSET_K, CLONE_NEWUSER, EPERM)
        p.if_then(_JMP_JSET_K, CLONE_THREAD, ALLOW)
        p.if_then(_JMP_JSET_K, CLONE_FILES, EPERM)
        p.ret(ALLOW)

    block(["clone"], clone)

    def unshare():
        p.ld(_arg_lo(0))
        p.if_then(_JMP_JSET_K, CLONE_NEWUSER, EPERM)
        p.ret(ALLOW)

    block(["unshare"], unshare)

    def bind():
        # socklen_t is 32 bits. 16 and 28 are sockaddr_in and sockaddr_in6:
        # the kernel's bind programs judge those (pods/netbpf.py) at no
        # cost. Any other length may be an abstract Unix name, which the
        # supervisor binds itself and records as the caller's pea's.
        p.ld(_arg_lo(2))
        p.if_then(_JMP_JEQ_K, 16, ALLOW)
        p.if_then(_JMP_JEQ_K, 28, ALLOW)
        p.ret(NOTIFY)

    block(["bind"], bind)

    def personality():
        p.ld(_arg_lo(0))
        for v in SAFE_PERSONALITIES:
            p.if_then(_JMP_JEQ_K, v, ALLOW)
        p.ret(EPERM)

    block(["personality"], personality)

    def mknod(arg):
        def emit():
            p.ld(_arg_lo(arg))
            p.and_(S_IFMT)
            p.if_then(_JMP_JEQ_K, S_IFCHR, EPERM)
            p.if_then(_JMP_JEQ_K, S_IFBLK, EPERM)
            p.ret(ALLOW)
        return emit

    block(["mknod"], mknod(1))
    block(["mknodat"], mknod(2))

    def sock():
        p.ld(_arg_lo(0))
        inet = p.label()
        p.if_then(_JMP_JEQ_K, AF_INET, inet)
        p.if_then(_JMP_JEQ_K, AF_INET6, inet)
        p.if_then(_JMP_JEQ_K, AF_UNIX, ALLOW)
        p.if_then(_JMP_JEQ_K, AF_NETLINK, ALLOW)
        p.ret(EAFNOSUPPORT)
        p.here(inet)
        p.ld(_arg_lo(2))
        p.if_then(_JMP_JEQ_K, IPPROTO_SCTP, EPERM)
        p.ld(_arg_lo(1))
        p.and_(0xF)  # the type without SOCK_NONBLOCK / SOCK_CLOEXEC
        p.if_then(_JMP_JEQ_K, SOCK_SEQPACKET, EPERM)
        p.ret(ALLOW)

    block(["socket"], sock)

    def sockpair():
        p.ld(_arg_lo(0))
        p.if_then(_JMP_JEQ_K, AF_UNIX, ALLOW)
        p.ret(EAFNOSUPPORT)

    block(["socketpair"], sockpair)

    def fcntl():
        setsig = p.label()
        p.ld(_arg_lo(1))
        p.if_then(_JMP_JEQ_K, F_SETOWN, NOTIFY)
        p.if_then(_JMP_JEQ_K, F_SETOWN_EX, EPERM)
        p.if_then(_JMP_JEQ_K, F_SETSIG, setsig)
        p.ret(ALLOW)
        # F_SETSIG with SIGCONT or SIGKILL: a descriptor made ready from
        # outside the pod (a peer, the log pipe the daemon drains) would
        # send it with no pod code running, and wake or kill a process
        # that `pod checkpoint` holds stopped (pods/podhold.py).
        p.here(setsig)
        p.ld(_arg_lo(2))
        p.if_then(_JMP_JEQ_K, signal.SIGCONT, EPERM)
        p.if_then(_JMP_JEQ_K, signal.SIGKILL, EPERM)
        p.ret(ALLOW)

    block(["fcntl"], fcntl)

    def prctl():
        # A parent-death signal survives an exec: the supervisor notes who
        # armed one, so that it never crosses a pea transition (the kernel
        # clears it only for set-id execs). Every other prctl is the
        # caller's own business.
        p.ld(_arg_lo(0))
        p.if_then(_JMP_JEQ_K, PR_SET_PDEATHSIG, NOTIFY)
        p.ret(ALLOW)

    block(["prctl"], prctl)

    def alarm():
        # Interval timers survive an exec too (see prctl): alarm(0) only
        # cancels; setitimer's new value is in memory, so every call is
        # noted (a value read there could change before the kernel reads it).
        p.ld(_arg_lo(0))
        p.if_then(_JMP_JEQ_K, 0, ALLOW)
        p.ret(NOTIFY)

    block(["alarm"], alarm)
    actions[NR["setitimer"]] = NOTIFY

    def ioctl():
        p.ld(_arg_lo(1))
        for cmd in (FIOSETOWN, SIOCSPGRP, TIOCSTI, TIOCLINUX):
            p.if_then(_JMP_JEQ_K, cmd, EPERM)
        p.ret(ALLOW)

    block(["ioctl"], ioctl)

    # Dispatch on the number: a binary search, so that an ordinary call
    # (read, write, ...) passes ~log2(n) comparisons, not n.
    table = sorted(actions.items())

    def emit_action(action):
        if isinstance(action, str):
            p.ja(action)
        else:
            p.ret(action)

    def search(entries):
        if len(entries) <= 4:
            for nr, action in entries:
                p.ins.append((_JMP_JEQ_K, 0, 1, nr))
                emit_action(action)
            p.ret(ALLOW)
            return
        mid = len(entries) // 2
        right = p.label()
        p.if_then(_JMP_JGE_K, entries[mid][0], right)
        search(entries[:mid])
        p.here(right)
        search(entries[mid:])

    search(table)
    for lab, emit in blocks:
        p.here(lab)
        emit()
    return p.assemble(notify_ret)


_programs: dict[bool, bytes] = {}


def program(notify: bool = True) -> bytes:
    """The filter, as an array of struct sock_filter. Without a supervisor
    (notify=False) the mediated calls fail with ENOSYS: never let through.
    Built once per process (the tagger builds both when the pod starts, and
    its monitors' children inherit them)."""
    prog = _programs.get(notify)
    if prog is None:
        prog = _programs[notify] = _build(NOTIFY if notify else RET_ERRNO | errno.ENOSYS)
    return prog


# ---------------------------------------------------------------- install
# The C library already loaded into this process (CDLL(None)): find_library
# would run ldconfig in a subprocess, milliseconds on every pod exec.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(notify: bool = True) -> int | None:
    """Install the pod's filter on the calling thread (the caller must be
    single-threaded, as a monitor's child is just before exec). Returns the
    notification listener fd (O_CLOEXEC) if ``notify``, else None.

    With notify=False the mediated calls fail with ENOSYS instead of being
    decided (a filter without a supervisor must never let them through)."""
    prog = program(notify)
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise SeccompUnavailable(e, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(e)}")
    flags = (FLAG_NEW_LISTENER | FLAG_WAIT_KILLABLE_RECV) if notify else 0
    rc = _libc.syscall(ctypes.c_long(_SYS_seccomp), ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
                       ctypes.c_uint(flags), ctypes.byref(fprog))
    if rc < 0:
        e = ctypes.get_errno()
        if e == errno.EINVAL and notify:
            what = ("seccomp user notification with SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV "
                    "(Linux >= 5.19)")
        elif e == errno.ENOSYS:
            what = "seccomp filters (CONFIG_SECCOMP_FILTER)"
        elif e == errno.EBUSY:
            what = "a second seccomp listener (this process already has one in its chain)"
        else:
            what = "the pod's seccomp filter"
        raise SeccompUnavailable(e, f"the kernel refused {what}: {os.strerror(e)}")
    return int(rc) if notify else None


def pidfd_take(pid: int, fd: int) -> int:
    """Copy descriptor ``fd`` out of process ``pid`` (host pid) with
    pidfd_getfd: how a daemon takes the listener out of a process that has
    already installed the filter (the caller must keep ``pid`` from being
    reaped meanwhile, e.g. it is the caller's child blocked on a pipe)."""
    from kernel.libc import pidfd_getfd
    from pods import notify as _n
    pidfd = _n.pidfd_open(pid)
    try:
        return pidfd_getfd(pidfd, fd)
    finally:
        os.close(pidfd)
