"""The kernel keeps directory listings for PeaFS (peafs/fuse_caches.c).

Before, every listing reached the daemon, which read the staging directory
again and stat'ed each entry: a Python CGI of the web example made ~64
getdents64 and ~800 newfstatat calls in the daemon per request (its
imports list the directories of sys.path). Now OPENDIR still reaches PeaFS
every time (the pea check and the barrier), and only the names are kept.
These tests count the daemon's getdents64 calls with strace, and try to
make a kept listing lie or leak: a change through the mount must show at
once, and a pea without "r" or a process outside the pod must still be
refused a listing that another pea just filled.
"""

from __future__ import annotations

import errno
import os

from helpers_peafs import daemon_calls, run_snippet

POLICY = '''
[pea.a.files]
"/" = "rwx"

[pea.b.files]
"/" = "rwx"
"/d" = "x"
'''

LISTINGS = 50


def _stage(m, n: int = 30) -> list[str]:
    (m.root / "d").mkdir()
    names = [f"file{i:02d}" for i in range(n)]
    for name in names:
        (m.root / "d" / name).write_text(name)
    return names


def test_a_listing_is_read_from_the_staging_directory_once(peafs_mount, tmp_path):
    m = peafs_mount(POLICY)
    names = _stage(m)
    calls, answer = daemon_calls(m, "getdents64", "a", f'''
out = [sorted(os.listdir("d")) for _ in range({LISTINGS})]
''', tmp_path)
    assert answer == [names] * LISTINGS
    # One read of the directory: entries, then the empty read that ends it.
    assert calls == 2, calls


def test_changes_through_the_mount_show_in_the_next_listing(peafs_mount):
    m = peafs_mount(POLICY)
    _stage(m, 3)
    out = run_snippet(m, "a", '''
out = {"start": sorted(os.listdir("d"))}
os.close(os.open("d/new", os.O_WRONLY | os.O_CREAT, 0o644))
out["created"] = sorted(os.listdir("d"))
os.unlink("d/file00")
out["unlinked"] = sorted(os.listdir("d"))
os.rename("d/file01", "d/moved")
out["renamed"] = sorted(os.listdir("d"))
os.mkdir("d/sub")
os.symlink("new", "d/link")
out["made"] = sorted(os.listdir("d"))
os.rename("d/moved", "elsewhere")
out["moved_out"] = sorted(os.listdir("d"))
''')
    assert out == {
        "start": ["file00", "file01", "file02"],
        "created": ["file00", "file01", "file02", "new"],
        "unlinked": ["file01", "file02", "new"],
        "renamed": ["file02", "moved", "new"],
        "made": ["file02", "link", "moved", "new", "sub"],
        "moved_out": ["file02", "link", "new", "sub"],
    }


def test_a_kept_listing_is_still_refused_to_a_pea_without_r(peafs_mount):
    # Pea a fills the kernel's copy of d's listing; pea b ("x" on d) asks
    # for it right after: OPENDIR still reaches PeaFS and is refused.
    m = peafs_mount(POLICY)
    names = _stage(m, 3)
    assert run_snippet(m, "a", 'out = sorted(os.listdir("d"))') == names
    out = run_snippet(m, "b", '''
try:
    os.listdir("d")
    out = "OK"
except OSError as e:
    out = errno.errorcode[e.errno]
''')
    assert out == "EACCES"
    # ... while what b may do still works: a lookup and a read under d.
    assert run_snippet(m, "b", 'out = open("d/file00").read()') == "file00"


def test_a_kept_listing_is_still_refused_to_a_process_outside_the_pod(peafs_mount):
    m = peafs_mount(POLICY)
    names = _stage(m, 3)
    assert run_snippet(m, "a", 'out = sorted(os.listdir("d"))') == names
    try:
        os.listdir(m.mountpoint / "d")       # this test process: host root, no pea
        got = "OK"
    except OSError as e:
        got = errno.errorcode[e.errno]
    assert got == "EACCES"


def test_an_entry_made_outside_the_mount_shows_in_the_next_listing(peafs_mount):
    # The kernel checks the directory's mtime before it serves kept names
    # (FUSE_CAP_AUTO_INVAL_DATA): a file an administrator puts into the
    # staging directory is listed at once, not after the attribute timeout.
    m = peafs_mount(POLICY)
    _stage(m, 1)
    assert run_snippet(m, "a", 'out = sorted(os.listdir("d"))') == ["file00"]
    (m.root / "d" / "from-the-host").write_text("x")
    assert run_snippet(m, "a", 'out = sorted(os.listdir("d"))') == ["file00", "from-the-host"]
    (m.root / "d" / "file00").unlink()
    assert run_snippet(m, "a", 'out = sorted(os.listdir("d"))') == ["from-the-host"]
