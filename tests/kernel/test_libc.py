"""kernel/libc.py: the ctypes system calls and their one error style."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernel import libc

REPO = Path(__file__).resolve().parents[2]


def test_check_raises_like_the_os_module():
    assert libc.check(0) == 0
    assert libc.check(7) == 7
    ctypes.set_errno(errno.EBADF)
    with pytest.raises(OSError) as e:
        libc.check(-1, "/some/path")
    assert (e.value.errno, e.value.strerror, e.value.filename) == (
        errno.EBADF, os.strerror(errno.EBADF), "/some/path")


def test_a_failed_call_says_the_system_s_words_only():
    # Flags outside the CLONE_* set unshare accepts: EINVAL before anything changes.
    with pytest.raises(OSError) as e:
        libc.unshare(0x1)
    assert e.value.errno == errno.EINVAL
    assert e.value.strerror == os.strerror(errno.EINVAL)
    assert str(e.value) == f"[Errno {errno.EINVAL}] {os.strerror(errno.EINVAL)}"


def test_unshare_makes_a_new_namespace():
    if os.geteuid() != 0:
        pytest.fail("unshare(CLONE_NEWUTS) needs CAP_SYS_ADMIN")
    mine = os.stat("/proc/self/ns/uts").st_ino
    pid = os.fork()
    if pid == 0:
        try:
            libc.unshare(libc.CLONE_NEWUTS)
            os._exit(0 if os.stat("/proc/self/ns/uts").st_ino != mine else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert os.stat("/proc/self/ns/uts").st_ino == mine


def test_pidfd_getfd_copies_a_descriptor():
    pidfd = os.pidfd_open(os.getpid())
    r, w = os.pipe()
    try:
        copy = libc.pidfd_getfd(pidfd, w)
        try:
            assert copy not in (r, w)
            os.write(copy, b"via the copy")
            assert os.read(r, 100) == b"via the copy"
            # The copy is close-on-exec, as the kernel makes it.
            assert not os.get_inheritable(copy)
        finally:
            os.close(copy)
        with pytest.raises(OSError) as e:
            libc.pidfd_getfd(pidfd, 100000)
        assert (e.value.errno, e.value.strerror) == (errno.EBADF, os.strerror(errno.EBADF))
    finally:
        for fd in (pidfd, r, w):
            os.close(fd)


@pytest.fixture
def tree(tmp_path):
    """tmp/secret (the host's) and tmp/root, a tree someone else controls,
    whose links point out of it."""
    (tmp_path / "secret").write_text("HOST")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "secret").write_text("POD")
    (root / "etc" / "up").symlink_to("../../secret")             # climbs out by ".."
    (root / "etc" / "abs").symlink_to(tmp_path / "secret")       # an absolute host path
    (root / "etc" / "slash").symlink_to("/secret")               # "/" of the tree, confined
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    yield tmp_path, root, fd
    os.close(fd)


def _read(fd: int) -> str:
    try:
        return os.read(fd, 100).decode()
    finally:
        os.close(fd)


def test_openat2_in_root_keeps_links_inside(tree):
    tmp, root, rootfd = tree
    # Followed as usual, both links reach the host's file...
    assert (root / "etc" / "up").read_text() == "HOST"
    assert (root / "etc" / "abs").read_text() == "HOST"
    flags = os.O_RDONLY | os.O_CLOEXEC
    how = libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS
    # ...resolved in the root, ".." stops at the root and "/" is the root.
    assert _read(libc.openat2(rootfd, "etc/up", flags, how)) == "POD"
    assert _read(libc.openat2(rootfd, "etc/slash", flags, how)) == "POD"
    assert _read(libc.openat2(rootfd, "/etc/../../../secret", flags, how)) == "POD"
    with pytest.raises(FileNotFoundError) as e:
        libc.openat2(rootfd, "etc/abs", flags, how)   # tmp/... does not exist in the tree
    assert e.value.filename == "etc/abs"
    assert e.value.strerror == os.strerror(errno.ENOENT)


def test_openat2_no_symlinks_refuses_any_link(tree):
    tmp, root, rootfd = tree
    how = libc.RESOLVE_NO_SYMLINKS | libc.RESOLVE_NO_MAGICLINKS
    with pytest.raises(OSError) as e:
        libc.openat2(libc.AT_FDCWD, str(root / "etc" / "slash"), os.O_RDONLY | os.O_CLOEXEC, how)
    assert e.value.errno == errno.ELOOP
    fd = libc.openat2(libc.AT_FDCWD, str(root / "secret"), os.O_RDONLY | os.O_CLOEXEC, how)
    assert _read(fd) == "POD"
    # A bytes path works too, and the flags are used as given: no O_CLOEXEC added.
    fd = libc.openat2(rootfd, b"secret", os.O_RDONLY, how)
    try:
        assert os.get_inheritable(fd)
        assert _read(os.dup(fd)) == "POD"
    finally:
        os.close(fd)


def test_beneath_refuses_an_escape(tree):
    tmp, root, rootfd = tree
    with pytest.raises(OSError) as e:
        libc.openat2(rootfd, "etc/up", os.O_RDONLY | os.O_CLOEXEC, libc.RESOLVE_BENEATH)
    assert e.value.errno == errno.EXDEV


def test_the_package_imports_nothing_above_it():
    # kernel is below rules, peafs and pods: importing all of it loads none.
    code = ("import sys, kernel.libc, kernel.procfs, kernel.idmap, kernel.names\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('rules', 'peafs', 'pods'))\n"
            "print(bad)\n")
    r = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True,
                       text=True, timeout=60, env={"PYTHONPATH": str(REPO)})
    assert (r.returncode, r.stdout, r.stderr) == (0, "[]\n", "")
