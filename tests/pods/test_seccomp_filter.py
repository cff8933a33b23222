"""The pod's seccomp filter (pods/seccomp.py): refused calls fail with EPERM,
mediated calls reach the supervisor (and fail when it is gone).

Two levels: the BPF program is run by a small interpreter here for every
rule and its argument cases (exact, cheap), and the refusals are then made
for real by a process of a stand-in pod (testbed/seccomp_harness.py),
whose root has every capability in its user namespace: where the kernel
alone would have answered something else (EINVAL for reboot's bad magic,
EBADF, ...), only the filter can have answered EPERM.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import trio

from pods import seccomp
from pods.seccomp_syscalls import NR, AUDIT_ARCH_X86_64
from testbed.seccomp_harness import Pea, fake_pod

ALLOW, EPERM, NOTIFY = seccomp.ALLOW, seccomp.EPERM, seccomp.NOTIFY
ENOSYS = seccomp.RET_ERRNO | errno.ENOSYS
KILL = seccomp.RET_KILL_PROCESS


def run_bpf(prog: bytes, nr: int, args=(0,) * 6, arch=AUDIT_ARCH_X86_64) -> int:
    """Interpret the classic BPF subset the filter uses over a seccomp_data."""
    args = tuple(args) + (0,) * (6 - len(args))
    data = struct.pack("<iIQ6Q", nr, arch, 0, *[a & (2**64 - 1) for a in args])
    ins = [struct.unpack_from("<HBBI", prog, i) for i in range(0, len(prog), 8)]
    a, pc, steps = 0, 0, 0
    while True:
        steps += 1
        assert steps < 10000
        code, jt, jf, k = ins[pc]
        if code == 0x20:
            a = struct.unpack_from("<I", data, k)[0]
        elif code == 0x54:
            a &= k
        elif code == 0x05:
            pc += k
        elif code == 0x15:
            pc += jt if a == k else jf
        elif code == 0x35:
            pc += jt if a >= k else jf
        elif code == 0x45:
            pc += jt if a & k else jf
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
        pc += 1


PROG = seccomp.program()


def test_numbers_match_kernel_headers():
    hdr = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
    assert hdr.exists(), "kernel headers (linux-libc-dev) are needed to check syscall numbers"
    known = dict(re.findall(r"#define __NR_(\w+)\s+(\d+)", hdr.read_text()))
    checked = 0
    for name, nr in NR.items():
        if name in known:
            assert int(known[name]) == nr, name
            checked += 1
    assert checked >= len(NR) - 3


def test_program_fits_and_arch_is_checked():
    assert len(PROG) // 8 < 4096
    assert run_bpf(PROG, NR["getpid"] if "getpid" in NR else 39) == ALLOW
    assert run_bpf(PROG, 39, arch=0x40000003) == KILL          # i386
    assert run_bpf(PROG, 0x40000000 | 39) == EPERM               # x32


@pytest.mark.parametrize("name", seccomp.REFUSED)
def test_bpf_refuses(name):
    assert run_bpf(PROG, NR[name]) == EPERM


@pytest.mark.parametrize("name", seccomp.MEDIATED)
def test_bpf_mediates(name):
    assert run_bpf(PROG, NR[name]) == NOTIFY


def test_bpf_ordinary_calls_allowed():
    for nr in (0, 1, 2, 3, 39, 57, 59, 60, 61, 231, 257, 262):   # read..openat, newfstatat
        assert run_bpf(PROG, nr) == ALLOW, nr


def test_bpf_self_shortcuts():
    for name in seccomp.MEDIATED_UNLESS_SELF:
        assert run_bpf(PROG, NR[name], (0,)) == ALLOW, name
        assert run_bpf(PROG, NR[name], (5,)) == NOTIFY, name
        # the kernel reads a pid_t (low word): so does the filter
        assert run_bpf(PROG, NR[name], (1 << 32,)) == ALLOW, name
    assert run_bpf(PROG, NR["setpriority"], (0, 0, 5)) == ALLOW
    assert run_bpf(PROG, NR["setpriority"], (0, 7, 5)) == NOTIFY
    assert run_bpf(PROG, NR["setpriority"], (1, 0, 5)) == NOTIFY
    assert run_bpf(PROG, NR["ioprio_set"], (1, 0, 0)) == ALLOW
    assert run_bpf(PROG, NR["ioprio_set"], (2, 0, 0)) == NOTIFY


def test_bpf_argument_rules():
    NEWUSER, FILES, THREAD = 0x10000000, 0x400, 0x10000
    assert run_bpf(PROG, NR["clone"], (0x11,)) == ALLOW                      # fork
    assert run_bpf(PROG, NR["clone"], (NEWUSER | 0x11,)) == EPERM
    assert run_bpf(PROG, NR["clone"], (FILES | 0x11,)) == EPERM
    assert run_bpf(PROG, NR["clone"], (FILES | THREAD | 0xF00,)) == ALLOW     # a thread
    assert run_bpf(PROG, NR["clone3"]) == ENOSYS
    assert run_bpf(PROG, NR["unshare"], (NEWUSER,)) == EPERM
    assert run_bpf(PROG, NR["unshare"], (0x20000,)) == ALLOW                 # CLONE_NEWNS
    for v in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF):
        assert run_bpf(PROG, NR["personality"], (v,)) == ALLOW
    for v in (0x0040000, 0x0400000, 0x1):
        assert run_bpf(PROG, NR["personality"], (v,)) == EPERM
    assert run_bpf(PROG, NR["mknod"], (0, 0o20644, 0)) == EPERM
    assert run_bpf(PROG, NR["mknod"], (0, 0o60644, 0)) == EPERM
    assert run_bpf(PROG, NR["mknod"], (0, 0o10644, 0)) == ALLOW              # fifo
    assert run_bpf(PROG, NR["mknodat"], (0, 0, 0o20600, 0)) == EPERM
    assert run_bpf(PROG, NR["mknodat"], (0, 0, 0o140600, 0)) == ALLOW        # socket
    assert run_bpf(PROG, NR["socket"], (2, 1, 0)) == ALLOW
    assert run_bpf(PROG, NR["socket"], (2, 1, 132)) == EPERM
    assert run_bpf(PROG, NR["socket"], (10, 5 | 0x80000, 0)) == EPERM
    assert run_bpf(PROG, NR["socket"], (1, 5, 0)) == ALLOW                   # unix seqpacket
    assert run_bpf(PROG, NR["socket"], (16, 3, 0)) == ALLOW                  # netlink
    EAFNOSUPPORT = seccomp.RET_ERRNO | errno.EAFNOSUPPORT
    for family in (17, 40, 30, 29, 38, 1 << 32 | 40):   # packet, vsock, tipc, can, alg
        assert run_bpf(PROG, NR["socket"], (family, 2, 0)) == EAFNOSUPPORT, family
    assert run_bpf(PROG, NR["socketpair"], (1, 1, 0, 0)) == ALLOW
    assert run_bpf(PROG, NR["socketpair"], (30, 5, 0, 0)) == EAFNOSUPPORT
    assert run_bpf(PROG, NR["fcntl"], (3, 8, 42)) == NOTIFY
    assert run_bpf(PROG, NR["fcntl"], (3, 15, 0)) == EPERM
    assert run_bpf(PROG, NR["fcntl"], (3, 3, 0)) == ALLOW
    assert run_bpf(PROG, NR["fcntl"], (3, 10, 18)) == EPERM                  # F_SETSIG SIGCONT
    assert run_bpf(PROG, NR["fcntl"], (3, 10, 9)) == EPERM                   # F_SETSIG SIGKILL
    assert run_bpf(PROG, NR["fcntl"], (3, 10, 0)) == ALLOW                   # F_SETSIG SIGIO
    assert run_bpf(PROG, NR["fcntl"], (3, 10, 34)) == ALLOW                  # F_SETSIG SIGRTMIN
    assert run_bpf(PROG, NR["ioctl"], (0, 0x5412, 0)) == EPERM               # TIOCSTI
    assert run_bpf(PROG, NR["ioctl"], (0, 0x8901, 0)) == EPERM               # FIOSETOWN
    assert run_bpf(PROG, NR["ioctl"], (0, 0x5401, 0)) == ALLOW               # TCGETS


# ------------------------------------------------------------- for real
# (name, args, what the kernel would answer pod root without the filter)
REAL = [
    ("init_module", (0, 0, 0)),
    ("finit_module", (-1, 0, 0)),
    ("delete_module", (0, 0)),
    ("kexec_load", (0, 0, 0, 0)),
    ("kexec_file_load", (-1, -1, 0, 0, 0)),
    ("reboot", (0, 0, 0, 0)),                  # bad magic: EINVAL without the filter
    ("settimeofday", (0, 0)),
    ("clock_settime", (0, 0)),
    ("clock_adjtime", (0, 0)),
    ("adjtimex", (0,)),
    ("swapon", (0, 0)),
    ("swapoff", (0,)),
    ("quotactl", (0, 0, 0, 0)),
    ("acct", (0,)),
    ("open_by_handle_at", (-1, 0, 0)),
    ("name_to_handle_at", (-1, 0, 0, 0, 0)),
    ("bpf", (0, 0, 0)),
    ("perf_event_open", (0, 0, -1, -1, 0)),
    ("io_uring_setup", (1, 0)),
    ("keyctl", (0, 0)),
    ("add_key", (0, 0, 0, 0, 0)),
    ("request_key", (0, 0, 0, 0)),
    ("userfaultfd", (0,)),
    ("mount", (0, 0, 0, 0, 0)),
    ("umount2", (0, 0)),
    ("fsopen", (0, 0)),
    ("fsmount", (-1, 0, 0)),
    ("open_tree", (-1, 0, 0)),
    ("move_mount", (-1, 0, -1, 0, 0)),
    ("mount_setattr", (-1, 0, 0, 0, 0)),
    ("pivot_root", (0, 0)),
    ("iopl", (3,)),
    ("ioperm", (0, 1, 1)),
    ("modify_ldt", (0, 0, 0)),
    ("syslog", (3, 0, 0)),
    ("lookup_dcookie", (0, 0, 0)),
    ("process_madvise", (-1, 0, 0, 0, 0)),
]


async def test_refused_calls_fail_with_eperm_in_a_pod():
    async with fake_pod({"a": Pea("a", connect=True)}) as pod:
        a = await pod.agent("a")
        wrong = {}
        for name, args in REAL:
            rc, e = await a.call("syscall", NR[name], *args)
            if (rc, e) != (-1, errno.EPERM):
                wrong[name] = (rc, errno.errorcode.get(e, e))
        assert wrong == {}


@pytest.fixture
def world_dir():
    """A directory the pod's unprivileged host uid can write (pytest's
    tmp_path is under a 0700 directory)."""
    d = Path(tempfile.mkdtemp(prefix="sctest", dir="/tmp"))
    os.chmod(d, 0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def test_argument_refusals_in_a_pod(world_dir):
    d = world_dir
    async with fake_pod({"a": Pea("a", connect=True)}) as pod:
        a = await pod.agent("a")
        path = await a.call("cstring", str(d / "null"))
        # mknod of a character device (1,3), and of a block device
        assert await a.call("syscall", NR["mknod"], path, 0o20666, os.makedev(1, 3)) == (-1, errno.EPERM)
        assert await a.call("syscall", NR["mknodat"], -100, path, 0o60666, os.makedev(7, 0)) == (-1, errno.EPERM)
        assert not (d / "null").exists()
        # a FIFO is no device: allowed
        fifo = await a.call("cstring", str(d / "fifo"))
        assert await a.call("syscall", NR["mknod"], fifo, 0o10666, 0) == (0, 0)
        assert (d / "fifo").exists()
        # nested user namespaces
        assert await a.call("syscall", NR["unshare"], 0x10000000) == (-1, errno.EPERM)
        assert await a.call("syscall", NR["clone"], 0x10000000 | 17, 0, 0, 0, 0) == (-1, errno.EPERM)
        assert await a.call("syscall", NR["clone3"], 0, 0) == (-1, errno.ENOSYS)
        # a descriptor table shared with another process
        assert await a.call("syscall", NR["clone"], 0x400 | 17, 0, 0, 0, 0) == (-1, errno.EPERM)
        # fork and threads still work (clone3 falls back to clone)
        assert await a.call("fork_and_thread") == 0
        # personality
        assert await a.call("syscall", NR["personality"], 0x0040000) == (-1, errno.EPERM)
        assert (await a.call("syscall", NR["personality"], 0xFFFFFFFF))[1] == 0
        # SCTP
        assert await a.call("syscall", NR["socket"], 2, 1, 132) == (-1, errno.EPERM)
        assert await a.call("syscall", NR["socket"], 10, 5, 0) == (-1, errno.EPERM)
        # families the network rules do not judge
        assert await a.call("syscall", NR["socket"], 40, 1, 0) == (-1, errno.EAFNOSUPPORT)
        # SIGIO owner through memory, typing into a terminal
        assert await a.call("syscall", NR["fcntl"], 0, 15, 0) == (-1, errno.EPERM)
        # a signal sent on an outside event, which would wake a held process
        assert await a.call("syscall", NR["fcntl"], 0, 10, 18) == (-1, errno.EPERM)
        assert await a.call("syscall", NR["fcntl"], 0, 10, 34) == (0, 0)
        assert await a.call("syscall", NR["ioctl"], 0, 0x5412, 0) == (-1, errno.EPERM)
        # x32 ABI
        assert await a.call("syscall", 0x40000000 | 39) == (-1, errno.EPERM)


async def test_foreign_architecture_kills_the_process():
    async with fake_pod({"a": Pea("a", connect=True)}) as pod:
        a = await pod.agent("a")
        # a child enters the kernel with int 0x80 (the i386 ABI): killed by SIGSYS
        assert await a.call("int80_child") == -31


async def test_mediated_calls_fail_without_a_supervisor():
    """The filter never lets a mediated call through: with the listener
    closed, the kernel fails them with ENOSYS."""
    async with fake_pod({"a": Pea("a", connect=True, bind=[8080])}, supervise=False) as pod:
        os.close(pod.listener_taken)
        pod.listener_taken = None
        a = await pod.agent("a")
        b = await pod.agent("a")
        assert await a.call("kill", b.vpid, 0) == -errno.ENOSYS
        assert await a.call("syscall", NR["ptrace"], 0x4206, b.vpid, 0, 0) == (-1, errno.ENOSYS)
        assert await b.call("getpid") == b.vpid      # untouched


async def test_closing_the_supervisor_fails_mediated_calls():
    async with fake_pod({"a": Pea("a", connect=True, bind=[8080])}) as pod:
        a = await pod.agent("a")
        b = await pod.agent("a")
        assert await a.call("kill", b.vpid, 0) == 0
        pod.supervisor.close()
        await trio.sleep(0.05)
        assert await a.call("kill", b.vpid, 0) == -errno.ENOSYS
        assert await a.call("syscall", NR["ptrace"], 0x4206, b.vpid, 0, 0) == (-1, errno.ENOSYS)


def test_install_outside_a_single_thread_is_explained():
    """A second listener in one chain is refused by the kernel (EBUSY): the
    error names the feature."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            seccomp.install(notify=True)
            try:
                seccomp.install(notify=True)
                os.write(w, b"no error")
            except seccomp.SeccompUnavailable as e:
                os.write(w, str(e).encode())
        finally:
            os._exit(0)
    os.close(w)
    msg = os.read(r, 1000).decode()
    os.waitpid(pid, 0)
    os.close(r)
    assert "second seccomp listener" in msg


def test_every_mediated_call_has_a_decision():
    """A mediated call without a handler would be refused blindly: every
    call the filter can send to the supervisor has its own decision."""
    from pods.supervisor import Supervisor
    sent = {name for name, nr in NR.items()
            if any(run_bpf(PROG, nr, args) == NOTIFY
                   for args in [(), (5, 5, 5, 5, 1, 16), (1, 8, 5), (1, 5, 5)])}
    assert sent >= set(seccomp.MEDIATED)
    missing = sorted(n for n in sent if not hasattr(Supervisor, "_do_" + n))
    assert missing == []


def test_the_security_document_names_every_refused_and_mediated_call():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "SECURITY.md").read_text()
    names = set(seccomp.REFUSED) | set(seccomp.MEDIATED) | set(seccomp.MEDIATED_UNLESS_SELF)
    names |= {"setpriority", "ioprio_set", "clone3", "mknod", "personality", "socketpair"}
    missing = sorted(n for n in names if f"`{n}" not in doc and f"{n}`" not in doc and n not in doc)
    assert missing == []
