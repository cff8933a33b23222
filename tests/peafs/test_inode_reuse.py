"""A reused inode number never merges a new object into an old Inode.

The inode table (peafs/inodes.py) finds objects by (st_dev, st_ino). An
entry whose O_PATH descriptor the cache evicted (or that the kernel forgot
while a child still names it as a parent) does not pin its host inode: the
file can be deleted in the staging directory and ext4 hands its number to
the next new object, typically at once. ``InodeTable._same`` confirms a key
hit against the entry's kernel file handle (which carries the generation)
before reusing it; without that check the new object would be merged into
the old entry: it would keep the old node id, get the old names added to
its links (rules are the intersection over every name: enforce.py), and
the old name, still held by the kernel, would reach the new file.

Every test here makes that happen for real through a mount whose
descriptor cache is 8 (PEAFS_FD_CACHE), deleting the old object on the host
side (never through the mount: the daemon would see the unlink) and
creating new objects elsewhere until one gets the old number (a bounded
loop; the test fails, never skips, if ext4 does not reuse it):

- a file: the new file is judged by its own path only, and the old name the
  kernel still holds gives the errno the kernel reports for a gone object,
  never the new content;
- a program: the old name had a transition rule, the new path has none;
  executing the new program stays in the caller's pea (not "ambiguous");
- a directory the kernel forgot while a live entry (a hard-linked file
  held by another name) still names it as a parent: entries under the new
  directory that reused its number are judged by the new directory's path.

Each test fails with ``InodeTable._same`` made to answer True (the merge
happens, in ``remember`` for a lookup and in ``held`` for a listing): the
new object is refused for its old names, the old name reads the new file,
the exec is refused as an ambiguous transition, the creation under the new
directory needs w on the old directory's path.
"""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers_attack import MARK, policy, popen_in_pea, py_cmd, run_py
from peafs_support import kill_pea

# 8 descriptors: a few dozen lookups push any entry out of the cache, so its
# host inode is pinned by nothing of ours and can be freed and reused.
EVICTING = {"PEAFS_FD_CACHE": "8"}
PADDING = 32            # objects looked up to evict an entry (4x the cache)
# Host creates tried for one deleted object, and deleted objects tried: a
# freed number is normally the next one ext4 hands out in its group, but on
# a shared machine another process creating files can take it first, and
# then it never comes back: the whole setup is tried again, with new names.
# 10 x 200: at most 2000 creates in all.
REUSE_TRIES = 200
ATTEMPTS = 10
LINE_TIMEOUT = 60       # seconds a holder may take to answer one command

ENOENT = errno.errorcode[errno.ENOENT]
EACCES = errno.errorcode[errno.EACCES]

# Snippets run with enter=False (cwd: the mount point), relative paths.

# Keeps an O_PATH descriptor on ARGS[0]: that pins the kernel's dentry and
# node (the kernel never FORGETs it), yet sends no FUSE open, so the daemon
# holds no descriptor of its own on the file (it could not be freed then).
# Answers one command a line: "reopen" (read through /proc/self/fd, the
# node itself), "path" (read by the name, through the kernel's dentry).
HOLD = r'''
os.chdir(MNT)
held = os.open(ARGS[0], os.O_PATH)
report("held")
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "reopen":
        report(try_read(f"/proc/self/fd/{held}"))
    elif cmd == "path":
        report(try_read(ARGS[0]))
    else:
        report("unknown command " + cmd)
'''

STAT_ALL = r'''
os.chdir(MNT)
report([attempt(os.stat, p) for p in ARGS])
'''

READ = r'''
os.chdir(MNT)
report({p: try_read(p) for p in ARGS})
'''

LIST_THEN_READ = r'''
os.chdir(MNT)
try:
    listing = sorted(os.listdir(ARGS[0]))
except OSError as e:
    listing = errno.errorcode.get(e.errno, str(e.errno))
report({"list": listing, "read": try_read(ARGS[1])})
'''

# Creates ARGS[0] (a file under the directory being tested), writes a line,
# reads it back.
CREATE_READ = r'''
os.chdir(MNT)
def make():
    fd = os.open(ARGS[0], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b"made here")
    finally:
        os.close(fd)
made = attempt(make)
report({"create": made, "read": try_read(ARGS[0]) if made == "OK" else None})
'''

# The pea a process is in (its cgroup's last component), after an exec.
EXEC = r'''
import subprocess
os.chdir(MNT)
try:
    p = subprocess.run([ARGS[0]], capture_output=True, text=True, timeout=30)
    got = {"status": p.returncode, "out": p.stdout.strip(), "err": p.stderr.strip()}
except OSError as e:
    got = {"errno": errno.errorcode.get(e.errno, str(e.errno))}
report(got)
'''


class Holder:
    """A pod process keeping one name of the mount alive (HOLD)."""

    def __init__(self, m, pea: str, rel: str):
        self.m, self.pea = m, pea
        self.buf = b""
        self.rel = rel
        self.proc = popen_in_pea(m, pea, py_cmd(m.mountpoint, HOLD, rel, enter=False),
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def wait_held(self) -> None:
        first = self._report()
        assert first == "held", f"holder of {self.rel} in pea {self.pea} reported {first!r}"

    def _report(self):
        fd = self.proc.stdout.fileno()
        while True:
            if b"\n" in self.buf:
                line, _, self.buf = self.buf.partition(b"\n")
                if line.startswith(MARK.encode()):
                    return json.loads(line[len(MARK):])
                continue
            ready, _, _ = select.select([fd], [], [], LINE_TIMEOUT)
            if not ready:
                raise AssertionError(f"holder in pea {self.pea} silent for {LINE_TIMEOUT} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"holder in pea {self.pea} exited "
                                     f"({self.proc.wait(timeout=30)})")
            self.buf += chunk

    def ask(self, cmd: str):
        self.proc.stdin.write(cmd.encode() + b"\n")
        self.proc.stdin.flush()
        return self._report()

    def stop(self) -> None:
        kill_pea(self.m.pod, self.pea)          # the pod process itself ...
        if self.proc.poll() is None:            # ... and its `peafs run` parent
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.proc.stdin.close()
        self.proc.stdout.close()


@pytest.fixture
def hold(peafs_mount):
    """hold(m, pea, rel) -> Holder; every holder is killed at teardown,
    before the mount goes (this fixture depends on peafs_mount)."""
    holders: list[Holder] = []

    def make(m, pea, rel):
        h = Holder(m, pea, rel)
        holders.append(h)           # before anything can fail: it is killed
        h.wait_held()
        return h
    try:
        yield make
    finally:
        for h in holders:
            try:
                h.stop()
            except Exception:  # noqa: BLE001 - every holder gets its chance
                pass


def _pad(root: Path, k: int) -> list[str]:
    """PADDING new files to look up, each one evicting an older descriptor
    (new ones for each attempt ``k``: a name the kernel has cached is not
    looked up again, and would evict nothing)."""
    d = root / f"pad{k}"
    d.mkdir()
    for i in range(PADDING):
        (d / f"p{i}").write_text("pad")
    return [f"pad{k}/p{i}" for i in range(PADDING)]


def _evict(m, pea: str, pad: list[str]) -> None:
    # Fresh lookups of PADDING objects: each takes a cache slot, so every
    # entry not used since (the held one) loses its descriptor.
    assert run_py(m, pea, STAT_ALL, *pad, enter=False) == ["OK"] * len(pad)


def _reuse(number: int, make) -> Path | None:
    """Make objects on the host with ``make(i) -> path`` until one has inode
    ``number``; the others are removed again. Non-matching objects are kept
    until the end: ext4 takes the lowest free number of a group, so
    removing each at once could hand the same wrong number back forever.

    None if none of REUSE_TRIES got it. Call it right after the deletion:
    any process creating files on the same file system (other tests on a
    shared machine) can take the freed number first (see ATTEMPTS)."""
    made: list[Path] = []
    got: list[int] = []
    try:
        for i in range(REUSE_TRIES):
            p = make(i)
            got.append(os.stat(p, follow_symlinks=False).st_ino)
            if got[-1] == number:
                return p
            made.append(p)
        return None
    finally:
        for p in made:
            if p.is_dir():
                p.rmdir()
            else:
                p.unlink()


def _attempts(attempt, what: str):
    """``attempt(k)``: set the scene up afresh, delete the old object on the
    host, and return what the test needs once a new object got its number
    (None: the number went elsewhere). Fails, never skips, after ATTEMPTS
    misses."""
    for k in range(ATTEMPTS):
        got = attempt(k)
        if got is not None:
            return got
    pytest.fail(f"the inode number of the deleted {what} was not reused by any of "
                f"{REUSE_TRIES} objects made on the host right after, in {ATTEMPTS} "
                f"attempts: this test needs that reuse (ext4 normally gives it to the "
                f"first one; other processes creating files on this file system can take "
                f"it first, but not every time)")


def _new_file(d: Path, k: int):
    def make(i: int) -> Path:
        p = d / f"c{k}-{i}"
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        return p
    return make


def _refusals(m) -> list[tuple]:
    return sorted((e["pea"], e["operation"], e["path"], e["rule"])
                  for e in m.audit() if "operation" in e)


# -- (a) a file ---------------------------------------------------------------

FILE_POLICY = policy('''
[pea.both.files]
"/" = "r"

[pea.newonly.files]
"/" = "r"
"/old/" = ""

[pea.oldonly.files]
"/" = "r"
"/new/" = ""
''')


@pytest.mark.parametrize("first", ["lookup", "readdir"])
def test_new_file_reusing_a_number_is_judged_by_its_own_path(peafs_mount, hold, tmp_path,
                                                             first):
    """The new file first reached by a lookup (``remember``) or by a listing
    of its directory (readdir's ``held``): either way a new entry, its own
    path only, and the old name still held by the kernel reaches nothing."""
    root = tmp_path / "root"
    (root / "old").mkdir(parents=True)
    (root / "new").mkdir()
    m = peafs_mount(FILE_POLICY, root=root, daemon_env=EVICTING)

    def attempt(k: int):
        old = root / "old" / f"f{k}"
        old.write_text("OLD CONTENT")
        pad = _pad(root, k)
        holder = hold(m, "both", f"old/{old.name}")
        # Control: the held node is the old file, readable by both names.
        assert [holder.ask("reopen"), holder.ask("path")] == ["OLD CONTENT"] * 2
        _evict(m, "both", pad)
        number = os.stat(old).st_ino
        os.unlink(old)                      # host side: the daemon is not told
        new = _reuse(number, _new_file(root / "new", k))
        return None if new is None else (holder, new)
    holder, new = _attempts(attempt, "file old/f")
    new.write_text("NEW CONTENT")
    rel = f"new/{new.name}"

    got = {}
    if first == "readdir":
        got["newonly"] = run_py(m, "newonly", LIST_THEN_READ, "new", rel, enter=False)
    else:
        got["newonly"] = run_py(m, "newonly", READ, rel, enter=False)[rel]
    got["both"] = run_py(m, "both", READ, rel, enter=False)[rel]
    got["oldonly"] = run_py(m, "oldonly", READ, rel, enter=False)[rel]
    # The old node, which the kernel still holds: re-opened as the node it
    # is (/proc/self/fd) the daemon's open_by_handle fails with ESTALE and
    # the caller gets it as is; opened by its name, the VFS retries an
    # ESTALE open once with LOOKUP_REVAL, the name is looked up again and
    # is gone: ENOENT.
    got["old_reopen"] = holder.ask("reopen")
    got["old_path"] = holder.ask("path")
    got["refusals"] = _refusals(m)

    newonly = ({"list": [new.name], "read": "NEW CONTENT"} if first == "readdir"
               else "NEW CONTENT")
    assert got == {
        "newonly": newonly,            # /old/ is closed to it: not one of the new file's paths
        "both": "NEW CONTENT",
        "oldonly": EACCES,             # /new/ is closed to it: the new file's path
        "old_reopen": errno.errorcode[errno.ESTALE],
        "old_path": ENOENT,
        # The one refusal names the new file's path, never the old name.
        "refusals": [("oldonly", "open", f"/{rel}", "/new/")],
    }


# -- (b) a program, its old name under a transition rule -----------------------

PROGRAM_POLICY = policy('''
[pea.a.files]
"/" = "r"
"/bin/" = "rx"
"/tbin/" = "rx"
"/plain/" = "rx"

[pea.a.exec]
"/tbin/" = "b"

[pea.b.files]
"/" = "r"
"/bin/" = "rx"
"/tbin/" = "rx"
"/plain/" = "rx"
''')

# Prints the pea it runs in. Its interpreter is on the mount: a transition
# commits when the kernel loads the program PeaFS opened last for the exec
# (test_transitions.py).
SHOW_BODY = "sed -n 's|^0::.*/||p' /proc/self/cgroup\n"


def test_new_program_reusing_a_transition_programs_number_runs_in_the_callers_pea(
        peafs_mount, hold, tmp_path):
    """Without the handle check the new program would carry the old name
    /tbin/prog (transition to b) beside its own /plain/... (none): two names
    leading to different peas, refused as an ambiguous transition."""
    root = tmp_path / "root"
    for d in ("bin", "tbin", "plain"):
        (root / d).mkdir(parents=True)
    m = peafs_mount(PROGRAM_POLICY, root=root, daemon_env=EVICTING)
    show = f"#!{m.mountpoint}/bin/mysh\n" + SHOW_BODY
    shutil.copy("/bin/dash", root / "bin" / "mysh")
    (root / "bin" / "mysh").chmod(0o755)

    def attempt(k: int):
        old = root / "tbin" / f"prog{k}"
        old.write_text(show)
        old.chmod(0o755)
        pad = _pad(root, k)
        # Control: the old program's rule is live (a -> b).
        assert run_py(m, "a", EXEC, f"tbin/{old.name}", enter=False) == {
            "status": 0, "out": "b", "err": ""}
        holder = hold(m, "a", f"tbin/{old.name}")
        _evict(m, "a", pad)
        number = os.stat(old).st_ino
        os.unlink(old)
        new = _reuse(number, _new_file(root / "plain", k))
        return None if new is None else (holder, new)
    holder, new = _attempts(attempt, "program tbin/prog")
    new.write_text(show)
    new.chmod(0o755)
    rel = f"plain/{new.name}"

    got = {
        "a": run_py(m, "a", EXEC, rel, enter=False),
        "b": run_py(m, "b", EXEC, rel, enter=False),
        # The old name held by the kernel: gone (see the file test).
        "old_path": holder.ask("path"),
    }
    got["refusals"] = _refusals(m)
    assert got == {
        "a": {"status": 0, "out": "a", "err": ""},     # no rule on /plain/: stays in a
        "b": {"status": 0, "out": "b", "err": ""},
        "old_path": ENOENT,
        "refusals": [],
    }


# -- (c) a forgotten directory, still a parent of a live entry ------------------

DIR_POLICY = policy('''
[pea.keeper.files]
"/" = "r"

[pea.newonly.files]
"/" = "r"
"/fresh/" = "rw"
"/old/" = ""

[pea.oldonly.files]
"/" = "r"
"/old/" = "rw"
''')


def _drop_dentries() -> None:
    # Reclaims every unused dentry and inode of the machine (harmless, the
    # caches refill): the kernel drops old/dK/child (unused) and then
    # old/dK, whose FUSE inode goes with its last dentry: FORGET.
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


def test_new_directory_reusing_a_forgotten_parents_number_is_judged_by_its_own_path(
        peafs_mount, hold, tmp_path):
    """old/dK is forgotten by the kernel but stays in the table as the parent
    name of old/dK/child, which the kernel still holds by its other name
    keep/linkK. Without the handle check a new directory that got old/dK's
    number would revive that entry (old node id, old name /old/dK kept):
    creating under /fresh/dN would need w on /old/dK too."""
    root = tmp_path / "root"
    for d in ("old", "keep", "fresh"):
        (root / d).mkdir(parents=True)
    m = peafs_mount(DIR_POLICY, root=root, daemon_env=EVICTING)

    def attempt(k: int):
        olddir = root / "old" / f"d{k}"
        olddir.mkdir()
        (olddir / "child").write_text("CHILD")
        os.link(olddir / "child", root / "keep" / f"link{k}")
        pad = _pad(root, k)
        # The kernel learns old/dK and old/dK/child; the holder then keeps
        # the same object alive by its other name (one entry, two links).
        assert run_py(m, "keeper", STAT_ALL, f"old/d{k}/child", enter=False) == ["OK"]
        holder = hold(m, "keeper", f"keep/link{k}")
        assert holder.ask("reopen") == "CHILD"
        # The entry's descriptor was opened as old/dK/child: on the host
        # that dentry pins its parent's, and old/dK's number could not be
        # freed while it is open. Evicted now (and not used again until
        # old/dK is gone: a re-open by handle could pick that dentry up).
        _evict(m, "keeper", pad)
        _drop_dentries()

        def make(i: int) -> Path:
            p = root / "fresh" / f"d{k}-{i}"
            p.mkdir()
            return p
        number = os.stat(olddir).st_ino
        os.unlink(olddir / "child")         # the object lives on as keep/linkK
        os.rmdir(olddir)
        new = _reuse(number, make)
        # Precondition: the kernel no longer has old/dK (a cached dentry
        # would answer this stat from its 300 s cache, without asking us):
        # it sent FORGET, and the daemon closed its descriptor. Checked only
        # now: the freed number must be taken at once (see _reuse).
        assert run_py(m, "keeper", STAT_ALL, f"old/d{k}", enter=False) == [ENOENT], \
            "the kernel kept old/dK's dentry through drop_caches: no FORGET, nothing tested"
        return None if new is None else (holder, new)
    holder, new = _attempts(attempt, "directory old/dK")
    (new / "there").write_text("THERE")
    rel = f"fresh/{new.name}"

    got = {
        "newonly": run_py(m, "newonly", CREATE_READ, f"{rel}/x", enter=False),
        "newonly_existing": run_py(m, "newonly", READ, f"{rel}/there", enter=False),
        "oldonly": run_py(m, "oldonly", CREATE_READ, f"{rel}/y", enter=False),
        # The live entry is untouched: still the object it was.
        "live": holder.ask("reopen"),
    }
    got["refusals"] = _refusals(m)
    assert got == {
        "newonly": {"create": "OK", "read": "made here"},
        "newonly_existing": {f"{rel}/there": "THERE"},     # /old/ is closed to it
        "oldonly": {"create": EACCES, "read": None},   # /fresh/ is r for it
        "live": "CHILD",
        # Refused on the parent (create needs w there first): the new
        # directory's path, never /old/dK.
        "refusals": [("oldonly", "create", f"/{rel}", "/")],
    }
