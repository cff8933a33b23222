"""The kernel caches symlink bodies for PeaFS (peafs/fuse_caches.c).

Without the cache every path walk through a symlink was a FUSE_READLINK
round trip (25 of ~30 requests per exec in a usr-merged root). The daemon's
own readlinkat calls are counted with strace; a replaced symlink must show
its new body at once (a new body is a new inode, never a reused node id).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_peafs import daemon_calls, run_snippet
from kernel import cgroup

POLICY = '''
[pea.a.files]
"/" = "rwx"
'''

READS = 50


def test_a_symlink_body_is_read_from_the_daemon_once(peafs_mount, tmp_path):
    m = peafs_mount(POLICY)
    os.symlink("target-of-the-link", m.root / "link")
    calls, answer = daemon_calls(m, "readlinkat", "a", f'''
out = [os.readlink("link") for _ in range({READS})]
''', tmp_path)
    assert answer == ["target-of-the-link"] * READS
    assert calls == 1


def test_a_path_walk_through_a_symlink_reads_it_once(peafs_mount, tmp_path):
    # The usr-merge case: /lib -> usr/lib, crossed by every library search.
    m = peafs_mount(POLICY)
    (m.root / "usr" / "lib").mkdir(parents=True)
    (m.root / "usr" / "lib" / "f").write_text("through the link")
    os.symlink("usr/lib", m.root / "lib")
    calls, answer = daemon_calls(m, "readlinkat", "a", f'''
out = [os.path.exists("lib/f") for _ in range({READS})]
''', tmp_path)
    assert answer == [True] * READS
    assert calls == 1


@pytest.mark.parametrize("how", ["rename-over", "unlink-then-create"])
def test_a_replaced_symlink_shows_its_new_body(peafs_mount, how):
    # unlink-then-create: the file system may give the new symlink the old
    # one's inode number; PeaFS gives it a new node (a new file handle), so
    # the kernel cannot serve the old body for it.
    m = peafs_mount(POLICY)
    os.symlink("first", m.root / "link")
    replace = ('os.symlink("second", "tmp-link"); os.rename("tmp-link", "link")'
               if how == "rename-over" else 'os.unlink("link"); os.symlink("second", "link")')
    out = run_snippet(m, "a", f'''
before = os.readlink("link")
{replace}
out = [before, os.readlink("link"), os.readlink("link")]
''')
    assert out == ["first", "second", "second"]


def test_a_missing_library_fails_the_mount_with_its_name(tmp_path):
    # `peafs mount` as a user runs it, but with the library pointed at a
    # file that does not exist: the daemon's mount fails after the fork,
    # and the parent prints the reason it got on the ready pipe (one JSON
    # line, kernel/jsonline.py), exit 1, nothing mounted.
    (tmp_path / "root").mkdir()
    (tmp_path / "mnt").mkdir()
    (tmp_path / "pod.toml").write_text(
        '[pod]\nname = "capsmissing"\nroot = "root"\nuid_map = [[0, 300000, 65536]]\n'
        'default_pea = "a"\n[pea.a.files]\n"/" = "r"\n')
    code = f'''
import sys
from pathlib import Path
import peafs.fusecaps as caps
from peafs.cli import main
caps.LIBRARY = Path({str(tmp_path / "absent.so")!r})
caps._lib = None
sys.exit(main(sys.argv[1:]))
'''
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]),
               PEAPOD_RUN=str(tmp_path / "run"))
    proc = subprocess.run([sys.executable, "-c", code, "mount", str(tmp_path / "root"),
                           str(tmp_path / "mnt"), "--policy", str(tmp_path / "pod.toml")],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("peafs: peafs mount: ")
    assert "absent.so is missing" in proc.stderr
    assert "FUSE_CAP_CACHE_SYMLINKS" in proc.stderr and "make deps" in proc.stderr
    assert not os.path.ismount(tmp_path / "mnt")
    assert not cgroup.pod_cgroup("capsmissing").exists()
