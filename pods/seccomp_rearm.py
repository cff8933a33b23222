"""Give a running process the pod's seccomp filter again, with a new
notification listener for the supervisor: mediation back after a restore.

Why: CRIU restores a process's seccomp filters (it reads them with
PTRACE_SECCOMP_GET_FILTER and installs them again at the end of the restore)
but not their notification listener: a restored pod process carries the
pod's filter with nobody listening, and every mediated call (kill of another
process, ...) fails with ENOSYS (docs/MIGRATION.md). A listener can only be
made by the process itself, when it installs a filter
(SECCOMP_FILTER_FLAG_NEW_LISTENER). So the daemon makes the process do it:
stopped under ptrace, the process runs seccomp() with the pod's filter
(pods.seccomp.program) and the daemon takes the listener out of it with
pidfd_getfd, then makes it close its own copy.

Why this gives the supervisor every mediated call again (kernel facts,
kernel/seccomp.c): filters stack; each call runs every filter of the chain
and the action of highest precedence wins, and of equal actions the one of
the newest filter (seccomp_run_filters keeps the first it meets going from
the newest, replacing it only by a strictly stronger one). The new filter is
the same program as the old one, so for each call both answer the same
action, and a USER_NOTIF goes to the new filter's listener. A second listener
in one chain is refused (EBUSY) only while an older filter still has one: a
restored filter has none, nor has a filter whose listener was closed.

What the caller must guarantee: the process is not running pod code while
this happens (CRIU's --leave-stopped restore, or a frozen cgroup), and it
is multi-threaded only if every thread shares the chain (the injected call
uses TSYNC so that all threads get the new filter at once).

x86_64 only (the filter itself is x86_64 only).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

from kernel.libc import check, pidfd_getfd
from pods import seccomp
from pods.notify import pidfd_open

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]

PTRACE_GETREGS, PTRACE_SETREGS = 12, 13
PTRACE_SYSCALL, PTRACE_DETACH = 24, 17
PTRACE_SEIZE, PTRACE_INTERRUPT = 0x4206, 0x4207
PTRACE_GETSIGMASK, PTRACE_SETSIGMASK = 0x420A, 0x420B
PTRACE_O_TRACESYSGOOD = 1
PTRACE_EVENT_STOP = 128
__WALL = 0x40000000

SYS_seccomp, SYS_close, SYS_restart_syscall = 317, 3, 219
FLAG_TSYNC = 1 << 0
FLAG_TSYNC_ESRCH = 1 << 4
# -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND, -ERESTART_RESTARTBLOCK:
# a call interrupted by our stop, which the kernel would have restarted.
_RESTART = {-512, -513, -514}
_RESTART_BLOCK = -516

# struct user_regs_struct (x86_64): 27 unsigned longs.
_REGS = ["r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
         "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
         "gs_base", "ds", "es", "fs", "gs"]


class Regs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_ulonglong) for n in _REGS]


class RearmError(Exception):
    pass


def _ptrace(req: int, pid: int, addr=0, data=0) -> int:
    return check(_libc.ptrace(req, pid, ctypes.c_void_p(addr), ctypes.c_void_p(data)))


def _wait_stop(pid: int) -> int:
    _, status = os.waitpid(pid, __WALL)
    if not os.WIFSTOPPED(status):
        raise RearmError(f"process {pid} ended while its filter was being re-armed "
                         f"(wait status {status:#x})")
    return status


def _getregs(pid: int) -> Regs:
    r = Regs()
    _ptrace(PTRACE_GETREGS, pid, 0, ctypes.addressof(r))
    return r


def _setregs(pid: int, r: Regs) -> None:
    _ptrace(PTRACE_SETREGS, pid, 0, ctypes.addressof(r))


def _signed(v: int) -> int:
    return v - (1 << 64) if v & (1 << 63) else v


def _syscall_insn(pid: int, regs: Regs) -> int:
    """An address in the process holding a `syscall` instruction (0f 05): right
    before rip when the process stopped in a call, else in its vDSO."""
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        try:
            mem.seek(regs.rip - 2)
            if mem.read(2) == b"\x0f\x05":
                return regs.rip - 2
        except OSError:
            pass
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                if line.rstrip().endswith("[vdso]"):
                    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                    mem.seek(lo)
                    i = mem.read(hi - lo).find(b"\x0f\x05")
                    if i >= 0:
                        return lo + i
    raise RearmError(f"process {pid}: no syscall instruction found (no vDSO?)")


def _inject(pid: int, saved: Regs, insn: int, nr: int, *args: int) -> int:
    """Run system call nr(args) in the stopped process; its return value."""
    r = Regs.from_buffer_copy(saved)
    r.rip, r.rax, r.orig_rax = insn, nr, (1 << 64) - 1  # orig_rax -1: no restart of the stopped call
    for name, v in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
        setattr(r, name, v & ((1 << 64) - 1))
    _setregs(pid, r)
    stops = 0
    while stops < 2:  # syscall-enter stop, then syscall-exit stop
        _ptrace(PTRACE_SYSCALL, pid, 0, 0)
        st = _wait_stop(pid)
        if os.WSTOPSIG(st) == (0x80 | 5):
            stops += 1
        elif st >> 16 == PTRACE_EVENT_STOP and stops == 0:
            # A stopped process (SIGSTOP: CRIU's --leave-stopped) reports its
            # group-stop once more after the seize: resume it again.
            continue
        else:
            raise RearmError(f"process {pid}: unexpected stop {st:#x} during an injected call")
    return _signed(_getregs(pid).rax)


def rearm(pid: int, notify: bool = True) -> int | None:
    """Install the pod's filter (pods.seccomp.program) in process ``pid``
    (host pid) with a new notification listener, and return a listener fd
    for the caller (O_CLOEXEC). The process keeps no copy of it.

    The process is stopped with PTRACE_SEIZE + PTRACE_INTERRUPT, so it may
    be running or stopped (CRIU --leave-stopped: SIGSTOP) on entry; it is
    left as it was found (a process that was stopped is stopped again)."""
    if platform.machine() != "x86_64":
        raise RearmError("re-arming a filter is implemented for x86_64 only")
    prog = seccomp.program(notify)
    pidfd = pidfd_open(pid)
    try:
        _ptrace(PTRACE_SEIZE, pid, 0, PTRACE_O_TRACESYSGOOD)
        try:
            _ptrace(PTRACE_INTERRUPT, pid, 0, 0)
            _wait_stop(pid)
            saved = _getregs(pid)
            # Block every signal while our calls run: a pending signal (a
            # SIGCHLD queued while it was stopped) would otherwise be delivered
            # at the first resume and run the process's own handler.
            mask = ctypes.c_uint64()
            _ptrace(PTRACE_GETSIGMASK, pid, 8, ctypes.addressof(mask))
            block_all = ctypes.c_uint64(2**64 - 1)
            _ptrace(PTRACE_SETSIGMASK, pid, 8, ctypes.addressof(block_all))
            try:
                return _install(pid, pidfd, saved, prog, notify)
            finally:
                # Put the process back as it was, whatever happened: its
                # registers (a call it was stopped in is restarted) and mask.
                back = Regs.from_buffer_copy(saved)
                rax = _signed(back.rax)
                if _signed(back.orig_rax) >= 0 and (rax in _RESTART or rax == _RESTART_BLOCK):
                    back.rax = back.orig_rax if rax in _RESTART else SYS_restart_syscall
                    back.rip -= 2
                _setregs(pid, back)
                _ptrace(PTRACE_SETSIGMASK, pid, 8, ctypes.addressof(mask))
        finally:
            try:
                # A process in a group stop (SIGSTOP) re-enters it on detach:
                # no signal is passed (a SIGSTOP passed here could arrive after
                # the caller's SIGCONT and stop it again).
                _ptrace(PTRACE_DETACH, pid, 0, 0)
            except OSError:
                pass
    finally:
        os.close(pidfd)


def _install(pid: int, pidfd: int, saved: Regs, prog: bytes, notify: bool) -> int | None:
    """seccomp() with the filter in the stopped process; the listener taken
    out of it and its copy closed there."""
    insn = _syscall_insn(pid, saved)
    # The filter and its sock_fprog on the stack, below the red zone. No other
    # thread may run meanwhile (it could rewrite them before the kernel copies
    # them): the caller guarantees the process is stopped, not just this thread.
    sp = (saved.rsp - 128 - len(prog) - 64) & ~0xF
    fprog_addr = (sp + len(prog) + 15) & ~0xF
    with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
        mem.seek(sp)
        mem.write(prog)
        mem.seek(fprog_addr)
        mem.write(struct.pack("<HxxxxxxQ", len(prog) // 8, sp))
    flags = FLAG_TSYNC | FLAG_TSYNC_ESRCH
    if notify:
        flags |= seccomp.FLAG_NEW_LISTENER | seccomp.FLAG_WAIT_KILLABLE_RECV
    rc = _inject(pid, saved, insn, SYS_seccomp, seccomp.SECCOMP_SET_MODE_FILTER,
                 flags, fprog_addr)
    if rc < 0:
        raise RearmError(f"process {pid}: seccomp() in the process failed: "
                         f"{os.strerror(-rc)}" + (" (an older filter still has a "
                         "listener)" if -rc == errno.EBUSY else ""))
    if not notify:
        return None
    try:
        return pidfd_getfd(pidfd, rc)
    finally:
        _inject(pid, saved, insn, SYS_close, rc)


