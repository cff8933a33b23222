"""Plain read-only opens share one kept description per file (peafs/keptfds.py).

Before, every OPEN re-opened the node through /proc/self/fd/N in the daemon.
Now the first read-only open of a regular file does, and the next ones dup
that descriptor. These tests count the daemon's re-opens with strace, and
try to make the shared description lie or leak: the pea rule must still be
checked for every open (another pea, an outsider), a write through another
open must be read at once, an open that asks for other flags must get a
description of its own, and a file the kernel has forgotten must not stay
open in the daemon.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time

import pytest

from helpers_peafs import daemon_calls, run_snippet
from peafs.keptfds import KeptReaders, shareable

POLICY = '''
[pea.a.files]
"/" = "rwx"

[pea.b.files]
"/" = "rwx"
"/secret" = ""
'''

OPENS = 50
REOPEN = "/proc/self/fd/"


def test_a_file_opened_many_times_is_reopened_once(peafs_mount, tmp_path):
    m = peafs_mount(POLICY)
    (m.root / "page").write_text("hello")
    calls, answer = daemon_calls(m, "openat", "a", f'''
out = [read("page") for _ in range({OPENS})]
''', tmp_path, containing=REOPEN)
    assert answer == ["hello"] * OPENS
    assert calls == 1, calls


def test_opens_with_other_flags_take_their_own_description(peafs_mount, tmp_path):
    # O_NOATIME and O_NONBLOCK live in the description: a shared one would
    # hand them to every other reader.
    m = peafs_mount(POLICY)
    (m.root / "page").write_text("hello")
    calls, answer = daemon_calls(m, "openat", "a", '''
out = []
for flags in (os.O_RDONLY | os.O_NONBLOCK, os.O_RDONLY | os.O_NOATIME, os.O_RDWR):
    for _ in range(3):
        fd = os.open("page", flags)
        out.append(os.read(fd, 5).decode())
        os.close(fd)
''', tmp_path, containing=REOPEN)
    assert answer == ["hello"] * 9
    assert calls == 9, calls


def test_the_rule_is_checked_for_every_open_of_a_kept_file(peafs_mount):
    m = peafs_mount(POLICY)
    (m.root / "secret").write_text("s3cret")
    assert run_snippet(m, "a", 'out = read("secret")') == "s3cret"
    # The description is kept now; pea b has no right on the file.
    assert run_snippet(m, "b", 'out = E(os.open, "secret", os.O_RDONLY)') == "EACCES"
    try:
        os.close(os.open(m.mountpoint / "secret", os.O_RDONLY))   # host root, no pea
        got = "OK"
    except OSError as e:
        got = errno.errorcode[e.errno]
    assert got == "EACCES"


def test_a_write_through_another_open_is_read_at_once(peafs_mount):
    m = peafs_mount(POLICY)
    (m.root / "page").write_text("first")
    out = run_snippet(m, "a", '''
out = [read("page")]
kept = os.open("page", os.O_RDONLY)
with open("page", "w") as f:
    f.write("second, longer")
out.append(os.pread(kept, 100, 0).decode())
out.append(read("page"))
with open("page.new", "w") as f:
    f.write("renamed over")
os.rename("page.new", "page")
out.append(read("page"))
out.append(os.pread(kept, 100, 0).decode())
os.close(kept)
''')
    assert out == ["first", "second, longer", "second, longer", "renamed over",
                   "second, longer"]


def _deleted_open_in(pid: int, name: str) -> bool:
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.endswith(f"/{name} (deleted)"):
            return True
    return False


def test_an_unlinked_file_is_not_held_open_once_the_kernel_forgets_it(peafs_mount):
    m = peafs_mount(POLICY)
    (m.root / "big").write_text("x" * 4096)
    out = run_snippet(m, "a", '''
out = len(read("big"))
os.unlink("big")
''')
    assert out == 4096
    pid = m.daemon_pid()
    # The kernel sends FORGET when it evicts the inode; dropping the dentry
    # and inode caches makes it do so now.
    deadline = time.monotonic() + 20
    while _deleted_open_in(pid, "big") and time.monotonic() < deadline:
        subprocess.run(["sh", "-c", "echo 2 > /proc/sys/vm/drop_caches"], check=True)
        time.sleep(0.2)
    assert not _deleted_open_in(pid, "big")


# -- the set itself -----------------------------------------------------------

@pytest.mark.parametrize("flags, ok", [
    (os.O_RDONLY | os.O_CLOEXEC, True),
    (os.O_RDONLY | os.O_CLOEXEC | 0o100000, True),        # O_LARGEFILE, added by the kernel
    (os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK, False),
    (os.O_RDONLY | os.O_CLOEXEC | os.O_NOATIME, False),
    (os.O_RDONLY | os.O_CLOEXEC | os.O_APPEND, False),
    (os.O_WRONLY | os.O_CLOEXEC, False),
    (os.O_RDWR | os.O_CLOEXEC, False),
    (os.O_RDONLY | os.O_CLOEXEC | os.O_TRUNC, False),
])
def test_only_plain_read_only_opens_share(flags, ok):
    assert shareable(flags) is ok


def _fds_open() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_set_is_bounded_and_closes_what_it_drops(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"f{i}"
        p.write_text(str(i))
        paths.append(str(p))
    kept = KeptReaders(size=2)
    before = _fds_open()
    for i, p in enumerate(paths):
        fd = kept.open(i, p)
        assert os.pread(fd, 10, 0) == str(i).encode()
        assert not os.get_inheritable(fd)
        os.close(fd)
    assert len(kept) == 2 and _fds_open() == before + 2
    fd = kept.open(0, paths[0])                 # dropped above: opened again
    os.close(fd)
    assert len(kept) == 2 and _fds_open() == before + 2
    os.close(kept.take(0))
    assert kept.take(0) is None
    assert len(kept) == 1 and _fds_open() == before + 1
    kept.close()
    assert len(kept) == 0 and _fds_open() == before
