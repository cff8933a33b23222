"""The decision core of PeaFS: may this pea do this to that object?

Pure, in the manner of h11's protocol core: the caller gathers the facts
(the caller's pea, the pod paths of the objects from the inode table, open
flags, the object's type, for an exec the state of the process) and this
module answers with a ``Verdict``; it does no I/O, reads no /proc, makes no
system call, raises no FUSEError and imports neither pyfuse3 nor trio (a
test reads its imports). The adapters around it do the rest:

- ``fs.py`` turns a FUSE request into facts (inode table, stat) and acts on
  the answer;
- ``enforce.py`` finds the caller's pea (/proc), writes a verdict's audit
  records (adding the process and its virtual uid) and raises the verdict's
  errno as FUSEError.

So every rule about *what is allowed* lives here and is tested in-process
(tests/peafs/test_decide.py), and the mounted tests are left to prove the
adapters and the kernel facts.

A Verdict is ``(error, audit, target)``: ``error`` 0 to go ahead or the errno
to answer; ``audit`` the refusals to log, in order (a refusal, or in complain
mode the refusals that were let through); ``target`` the pea an exec moves
to when it commits. The common answer, allowed with nothing to log, is the
one shared constant ``ALLOW``: a permitted request allocates no verdict.

Permissions are the rule engine's (rules/): each pod path of an object is
matched for the pea (``pea.match_parts``, link rules included) and the
needed letters must be granted on every path the object is known by: a hard
link is no way around the rule of the original name (intersection). A pea in
complain mode gets every rule refusal logged with ``complain`` and let
through; refusals that are not rules (no pea at all, a device node, an
ambiguous or impossible transition, a resource limit) hold in complain mode
too.

A decision whose facts would need I/O only after a first check passed (the
entries of an unlink or a rename: a stat the daemon should not make for a
caller already refused) is made in two calls, in the order the checks had
always been made, so the audit log and the errnos stay what they were.
"""

from __future__ import annotations

import errno
import stat
from typing import NamedTuple

from .ids import OVERFLOW_ID

# Open flags, as Linux defines them on x86-64, arm64 and the other
# "generic" ABIs (tests/peafs/test_decide.py checks them against the os
# module: a port to an ABI with other values fails there, not silently).
O_ACCMODE = 0o3
O_RDONLY = 0o0
O_WRONLY = 0o1
O_RDWR = 0o2
O_TRUNC = 0o1000
FMODE_EXEC = 0o40          # the kernel's __FMODE_EXEC in an exec's open flags
# access(2) mode bits.
R_OK, W_OK, X_OK = 4, 2, 1

DEVICE_TYPES = (stat.S_IFCHR, stat.S_IFBLK)
SPECIAL_TYPES = (stat.S_IFIFO, stat.S_IFSOCK)
# Only the user.* xattr namespace may be written from a pod: trusted.* and
# security.* (file capabilities!) written by the daemon, which is real root,
# would be honoured by the host.
WRITABLE_XATTR_PREFIX = b"user."


class Record(NamedTuple):
    """One audit line to write, without what only the adapter knows (the
    process and its virtual uid): docs/ARCHITECTURE.md, "Audit"."""

    pea: str | None
    operation: str
    path: str
    need: str           # the letters missing ("" when no letter is the reason)
    rule: str           # the deciding rule as written, or why
    kind: str           # "path" | "directory" | "default" | "barrier" | "link" | ...
    complain: bool


class Verdict(NamedTuple):
    """The answer to one request (see the module docstring)."""

    error: int                      # 0: go ahead; else the errno to answer
    audit: tuple[Record, ...] = ()  # to log, in order, whatever ``error`` is
    target: str | None = None       # exec: the pea to move to at the commit

    @property
    def allowed(self) -> bool:
        return self.error == 0


ALLOW = Verdict(0)
# Refusals with nothing to log: what is not a pea rule (the object's type,
# an xattr namespace) or cannot be judged at all.
EACCES = Verdict(errno.EACCES)
EPERM = Verdict(errno.EPERM)
ENODATA = Verdict(errno.ENODATA)

BARRIER = "caller is in no pea of this pod"


def path_str(parts: tuple[str, ...]) -> str:
    """A pod path of path components ("/" for ())."""
    return "/" + "/".join(parts)


def _first(paths) -> str:
    return path_str(paths[0]) if paths else ""


# -- the primitives -----------------------------------------------------------

def outsider(operation: str, path: str = "") -> Verdict:
    """A caller in no pea of this pod (a host process, host root included,
    another pod): refused everything, the barrier."""
    return Verdict(errno.EACCES, (Record(None, operation, path, "", BARRIER, "barrier", False),))


def see(pea, operation: str) -> Verdict:
    """Seeing (lookup, readlink, listxattr, getattr): never refused by pea
    rules, but only a pea of this pod sees anything. (``Enforcer.caller``
    is this decision, inlined for the busiest requests.)"""
    return ALLOW if pea is not None else outsider(operation)


def granted(pea, paths) -> str:
    """The letters ``pea`` is granted on every one of ``paths``
    (intersection, in "rwx" order); "" for no path."""
    perm = None
    for parts in paths:
        p = pea.match_parts(parts).perm
        perm = p if perm is None else "".join(c for c in perm if c in p)
    return perm or ""


def check(pea, operation: str, need: str, paths) -> Verdict:
    """Require ``need`` on every one of ``paths`` (an object's pod paths).

    ``pea`` None is an outsider. A refusal names the first path that lacks
    a letter (and only the letters missing there); in complain mode every
    such path is logged and the request goes ahead.
    """
    if pea is None:
        return outsider(operation, _first(paths))
    if not paths:
        # An object with no known name: only a bug gets here. Fail safe.
        rec = Record(pea.name, operation, "?", need, "object has no known path", "barrier",
                     pea.complain)
        return Verdict(0 if pea.complain else errno.EACCES, (rec,))
    audit = None
    for parts in paths:
        m = pea.match_parts(parts)
        perm = m.perm
        if need in perm:
            # The common case, without building anything: a substring of the
            # granted letters holds all of them (both are in "rwx" order).
            continue
        missing = "".join(c for c in need if c not in perm)
        if not missing:
            continue
        rec = Record(pea.name, operation, path_str(parts), missing, m.rule, m.kind,
                     pea.complain)
        if not pea.complain:
            return Verdict(errno.EACCES, (rec,))
        audit = (rec,) if audit is None else audit + (rec,)
    return ALLOW if audit is None else Verdict(0, audit)


def both(first: Verdict, second: Verdict) -> Verdict:
    """Two checks made in turn, the second only if ``first`` went ahead:
    ``second``, after ``first``'s complain records."""
    if not first.audit:
        return second
    return Verdict(second.error, first.audit + second.audit, second.target)


def _refuse_after(v: Verdict, error: int) -> Verdict:
    """Refuse with ``error`` what ``v`` let through, keeping its records."""
    return Verdict(error, v.audit) if v.audit else Verdict(error)


def entry_paths(name_paths, object_paths):
    """The paths an entry is judged by: its name in this directory
    (``name_paths``, one per path of the directory) and every other name its
    object is known by (``object_paths``, from the inode table). A hard link
    in a writable directory must not make the original writable: the
    strictest rule wins."""
    paths = list(name_paths)
    for p in object_paths:
        if p not in paths:
            paths.append(p)
    return paths


# -- files ---------------------------------------------------------------------

def need_for_open(flags: int) -> str:
    """Letters an open (not an exec: ``exec_open``) needs: r / w by access
    mode, and w for O_TRUNC (a truncation is a write, whatever the mode)."""
    acc = flags & O_ACCMODE
    if acc == O_RDONLY:
        return "rw" if flags & O_TRUNC else "r"
    if acc == O_WRONLY:
        return "w"
    if acc == O_RDWR:
        return "rw"
    return "w" if flags & O_TRUNC else ""


def openable(fmt: int) -> Verdict:
    """FIFOs, sockets and symlinks are opened by the kernel itself, never
    through FUSE's open; one that gets here anyway is refused."""
    if fmt in SPECIAL_TYPES or fmt == stat.S_IFLNK:
        return EACCES
    return ALLOW


def open_file(pea, paths, flags: int, fmt: int) -> Verdict:
    """An open that is not an exec (FMODE_EXEC: see ``exec_open``)."""
    v = check(pea, "open", need_for_open(flags), paths)
    if v.error:
        return v
    shape = openable(fmt)
    return v if shape is ALLOW else _refuse_after(v, shape.error)


def create(pea, dir_paths, new_paths, flags: int) -> Verdict:
    """Create and open: w on the directory, and what the open mode needs on
    the new name (a file created write-only in a directory the pea may write
    but not read below is still only writable)."""
    v = check(pea, "create", "w", dir_paths)
    if v.error:
        return v
    return both(v, check(pea, "create", need_for_open(flags), new_paths))


def opendir(pea, paths) -> Verdict:
    return check(pea, "opendir", "r", paths)


def set_attributes(pea, paths) -> Verdict:
    """chmod, chown, truncate, utimes: all writes to the object."""
    return check(pea, "setattr", "w", paths)


def get_attributes(pea, is_root: bool) -> Verdict:
    """The one thing outsiders may see is the mount point's own attributes,
    so host tools can tell it is a mount (ismount, findmnt, the pod daemon's
    own checks). Nothing below it."""
    if pea is None and is_root:
        return ALLOW
    return see(pea, "getattr")


def access(pea, paths, mode: int, is_dir: bool) -> bool:
    """access(2), asked only without default_permissions: whether the pea
    grants what ``mode`` asks (x on a directory is walking: seeing)."""
    perm = granted(pea, paths)
    need = ("r" if mode & R_OK else "") + ("w" if mode & W_OK else "")
    if mode & X_OK and not is_dir:
        need += "x"
    return all(c in perm for c in need) or pea.complain


def getxattr(pea, paths, fmt: int) -> Verdict:
    """xattrs hold data: reading one is a read. A symlink has none we
    would show (the daemon reads through a magic link that follows it)."""
    v = check(pea, "getxattr", "r", paths)
    if v.error or fmt != stat.S_IFLNK:
        return v
    return _refuse_after(v, errno.ENODATA)


def xattr_write(pea, operation: str, paths, name: bytes, fmt: int) -> Verdict:
    """setxattr/removexattr: a write, and only in the user.* namespace."""
    v = check(pea, operation, "w", paths)
    if v.error or (name.startswith(WRITABLE_XATTR_PREFIX) and fmt != stat.S_IFLNK):
        return v
    return _refuse_after(v, errno.EPERM)


# -- names in directories ----------------------------------------------------

def make(pea, operation: str, dir_paths) -> Verdict:
    """mkdir, symlink: w on the directory."""
    return check(pea, operation, "w", dir_paths)


def mknod(pea, dir_paths, mode: int) -> Verdict:
    """w on the directory; device nodes are EPERM for everyone (on the
    staging disk they would open host devices, whatever nodev says here)."""
    v = check(pea, "mknod", "w", dir_paths)
    if v.error or stat.S_IFMT(mode) not in DEVICE_TYPES:
        return v
    return _refuse_after(v, errno.EPERM)


def link(pea, dir_paths, old_paths) -> Verdict:
    """w on the new name's directory, and some letter of rwx on every known
    path of the original: a new name is a new way to reach the object, so a
    pea may only link what it may access (docs/FORMAT.md section 9)."""
    v = check(pea, "link", "w", dir_paths)
    if v.error:
        return v
    if not old_paths:
        return _refuse_after(v, errno.EACCES)
    if granted(pea, old_paths):
        return v
    rec = Record(pea.name, "link", path_str(old_paths[0]), "rwx",
                 "no access to the original", "link", pea.complain)
    return both(v, Verdict(0 if pea.complain else errno.EACCES, (rec,)))


def remove(pea, operation: str, dir_paths) -> Verdict:
    """unlink/rmdir, first step: w on the directory."""
    return check(pea, operation, "w", dir_paths)


def remove_entry(pea, operation: str, paths) -> Verdict:
    """unlink/rmdir, second step: w on the entry, by every name its object
    has (``entry_paths``)."""
    return check(pea, operation, "w", paths)


def rename_dirs(pea, old_dir_paths, new_dir_paths) -> Verdict:
    """rename, first step: w on both directories (moving out of a directory
    writes it as surely as moving in)."""
    v = check(pea, "rename", "w", old_dir_paths)
    if v.error:
        return v
    return both(v, check(pea, "rename", "w", new_dir_paths))


def rename_entry(pea, paths) -> Verdict:
    """rename, then: w on the entry moved, by every name its object has,
    and the same on an entry the rename replaces or exchanges (asked only
    when the new name exists)."""
    return check(pea, "rename", "w", paths)


# -- exec ----------------------------------------------------------------------

def exec_open(judge, paths) -> Verdict:
    """An exec open (FMODE_EXEC), judged under ``judge``: the caller's pea,
    or the target of the caller's pending transition for an interpreter of
    that exec (it runs there if the exec commits).

    x on every name of the program; ``target`` is the pea its exec table
    names, if another. Two names of one program that lead to different
    peas: we cannot tell which the caller meant, so neither (EACCES, even
    in complain mode).
    """
    v = check(judge, "exec", "x", paths)
    if v.error:
        return v
    if len(paths) == 1:
        target = judge.transition_parts(paths[0])
    else:
        targets = {judge.transition_parts(p) for p in paths}
        if len(targets) > 1:
            rec = Record(judge.name, "exec", path_str(paths[0]), "x",
                         "ambiguous transition (hard links)", "link", False)
            return Verdict(errno.EACCES, v.audit + (rec,))
        target = targets.pop() if targets else None
    if target is None or target == judge.name:
        return v
    return Verdict(0, v.audit, target)


THREADED = "a process with several threads cannot change pea"


def transition(source: str, path: str, *, watched: bool, stage: str | None = None,
               threads: str | None = None, tracer: str | None = "0",
               guard: str | None = None) -> Verdict:
    """May a process of pea ``source`` record a transition for this exec?

    Facts, gathered by the adapter (enforce.py): ``watched``, whether the
    mount watches exec commits at all; ``stage``, which open of the exec
    this is (execwatch.exec_stage: "main" for the program execve names,
    "interp" for a #! interpreter); ``threads`` and ``tracer``, the process's
    Threads and TracerPid from /proc/PID/status; ``guard``, why the pod's
    supervisor holds it back, or None. Never in complain mode: a transition
    is privilege, not a rule to learn.
    """
    if not watched:
        why = "transitions are off (no exec watch)"
    elif stage not in ("main", "interp"):
        why = "transition on an ELF interpreter, or an exec open we cannot place"
    elif threads != "1":
        # The commit event names the process, not the thread: with two
        # threads we could not tell whose exec committed.
        why = THREADED
    elif tracer != "0":
        # Its tracer would run code in the target pea after the move.
        why = "a traced process cannot change pea"
    elif guard:
        # A signal armed before the exec would cross it (F_SETOWN,
        # PR_SET_PDEATHSIG, timers): SECURITY.md, "Exec transitions".
        why = f"cannot change pea: {guard}"
    else:
        return ALLOW
    return Verdict(errno.EACCES, (Record(source, "exec", path, "x", why, "transition", False),))


# -- FIFOs and sockets -----------------------------------------------------------

def refusing_answer(st_mode: int) -> tuple[int, int, int]:
    """(mode, uid, gid) of a FIFO or socket that no caller may open or
    connect to: no permission bits, owned by the unmapped overflow id."""
    return st_mode & ~0o7777, OVERFLOW_ID, OVERFLOW_ID


def special(pea, paths, fmt: int, st_mode: int, st_uid: int, st_gid: int,
            uid: int, gid: int, vuid: int | None):
    """The attributes of a FIFO or socket for this caller.

    Opening a FIFO and connecting to a socket never reach FUSE: the kernel
    decides from the attributes (default_permissions). A pea lacking r or w
    gets an answer under which the kernel's own check gives exactly (Unix
    permission AND pea permission): owner and group become the unmapped
    overflow id, so pod root's capabilities (granted only over inodes whose
    ids are mapped in its namespace) no longer apply, and the "other" bits
    carry what this caller may do. ``st_uid``/``st_gid`` are the host ids
    the reply carries, ``uid``/``gid`` the caller's host ids, ``vuid`` its
    virtual uid (None if unmapped).

    Returns (verdict, answer): ``answer`` None for the true attributes, or
    (mode, uid, gid) to answer instead. In complain mode the true
    attributes (the kernel's own check then decides alone) and what the pea
    would have been refused as the verdict's records, which is what `pod
    rules suggest` learns from: the kernel opens the object without asking
    us, so this is the one moment we see it.
    """
    perm = granted(pea, paths) if pea is not None else ""
    if "r" in perm and "w" in perm:
        return ALLOW, None
    if pea is not None and pea.complain:
        return check(pea, "connect" if fmt == stat.S_IFSOCK else "open", "rw", paths), None
    mode = st_mode & 0o777
    if vuid == 0 and st_uid != OVERFLOW_ID and st_gid != OVERFLOW_ID:
        unix = 0o7                                  # pod root: DAC override
    elif uid == st_uid:
        unix = (mode >> 6) & 7
    elif gid == st_gid:
        unix = (mode >> 3) & 7
    else:
        unix = mode & 7
    want = (4 if "r" in perm else 0) | (2 if "w" in perm else 0)
    return ALLOW, ((st_mode & ~0o7777) | (unix & want), OVERFLOW_ID, OVERFLOW_ID)


# -- resources -----------------------------------------------------------------

def over_share(pea_name: str, operation: str, paths, share: int) -> Verdict:
    """A pea whose share of the daemon's descriptors is full (budget.py):
    ENFILE, logged as a limit, never let through in complain mode."""
    why = (f"the pea holds {share} open files and directories, its share of the "
           "daemon's descriptors")
    return Verdict(errno.ENFILE, (Record(pea_name, operation, path_str(paths[0]) if paths else "?",
                                         "", why, "limit", False),))
