"""/proc/PID/status: the one parser.

The kernel writes status as "Key:\\tvalue" lines (the fields of
fs/proc/array.c); the values peafs and pods read are numbers or lists of
numbers separated by white space (Uid: real, effective, saved, fs; NSpid:
the pid in each pid namespace from the host's down to the process's own).

A process that is gone (or whose status cannot be read) is None, never an
exception: every caller treats "gone" as an answer. A pid read here may be
reused the moment it is read; callers that act on the process pin it first
(a pidfd) or hold a reference that keeps it from being reaped.
"""

from __future__ import annotations

import os

# One read covers a status file (~1.5 KiB); a larger one (a long Groups
# line) is read on until a short read, which for a seq_file means the end.
_CHUNK = 8192


def status(pid: int) -> dict[str, str] | None:
    """The fields of /proc/PID/status (``pid`` a process or thread id, in
    this process's pid namespace), values stripped; None if it is gone."""
    try:
        fd = os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while True:
            chunk = os.read(fd, _CHUNK)
            chunks.append(chunk)
            if len(chunk) < _CHUNK:
                break
    except OSError:
        return None   # ESRCH: it exited between the open and the read
    finally:
        os.close(fd)
    return parse(b"".join(chunks))


def parse(data: bytes) -> dict[str, str]:
    """The fields of a status file's contents. Each line is split at its
    first ":" (Name, the command's name, may hold one, and any other byte
    but NUL: it never fails the parse)."""
    out = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        key, _, value = line.partition(":")
        if key:
            out[key] = value.strip()
    return out


def ints(value: str) -> list[int]:
    """The numbers of a field such as Uid, NSpid or NSsid."""
    return [int(x) for x in value.split()]


def _field(pid: int, key: str) -> list[int] | None:
    st = status(pid)
    if st is None or not st.get(key):
        return None
    try:
        return ints(st[key])
    except ValueError:
        return None


def tgid(tid: int) -> int | None:
    """The process (thread group) thread ``tid`` belongs to."""
    v = _field(tid, "Tgid")
    return v[0] if v else None


def children(pid: int, tid: int) -> list[int]:
    """The processes thread ``tid`` of ``pid`` forked that are not reaped
    yet: zombies included, which no cgroup.procs lists (cgroup v2 unlinks
    a task from its cgroup when it exits, its parent's list keeps it).
    Needs CONFIG_PROC_CHILDREN; [] for a thread that is gone."""
    try:
        with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        if not os.path.exists("/proc/self/task/%d/children" % os.getpid()):
            raise OSError("the kernel lacks /proc/PID/task/TID/children "
                          "(CONFIG_PROC_CHILDREN)") from None
        return []
    except ProcessLookupError:
        return []


def ppid(pid: int) -> int | None:
    """The parent of ``pid``, in this process's pid namespace (0: none
    visible here)."""
    v = _field(pid, "PPid")
    return v[0] if v else None


def nspid(pid: int) -> list[int] | None:
    """The pids of ``pid`` in every pid namespace it is in, this process's
    namespace first, its own namespace's last."""
    return _field(pid, "NSpid")


def vpid(pid: int) -> int | None:
    """The pid ``pid`` has in its own (innermost) pid namespace: in a pod,
    the pid the pod's processes know it by."""
    v = nspid(pid)
    return v[-1] if v else None


def reap_ended() -> list[int]:
    """waitpid(-1, WNOHANG) until no ended child is left: the pids reaped
    (a reaper's loop: pid 1 of a pod, the pod's fork server)."""
    reaped = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append(pid)
