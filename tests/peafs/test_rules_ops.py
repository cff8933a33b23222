"""Every operation against the caller's pea rules, with the exact errno.

Pea "p" is run as pod root (uid 0, which has CAP_DAC_OVERRIDE over the pod's
files inside its user namespace): what stops it is PeaFS, not mode bits.
docs/FORMAT.md section 6: r = open for reading, list a directory; w = write, truncate,
chmod/chown/utimes, set/remove xattrs, and in a directory create, link,
symlink, mknod, mkdir, unlink, rmdir, rename (both directories and the entry
moved or replaced); x = execute. Seeing (lookup, stat, readlink, listxattr)
is never refused.
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess

import pytest

from peafs_support import run_in_pea
from helpers_peafs import daemon_calls, in_subprocess_as_host, run_snippet, tree

POLICY = r'''
[pea.all.files]
"/" = "rwx"

[pea.p.files]
"/" = "r"
"/ro/" = "r"
"/rw" = "rw"
"/rw/" = "rw"
"/rw/locked" = "r"
"/none" = "r"
"/none/" = ""
"/hidden/" = ""
"/bin/" = "x"
"/rbin/" = "r"
"/pipes/" = "r"
"/pipes/wfifo" = "w"
"/pipes/rfifo" = "r"
"/pipes/rwfifo" = "rw"
"/pipes/wsock" = "w"
"/pipes/nonefifo" = ""

[pea.other.files]
"/" = "rwx"
'''

SCRIPT = "#!/bin/sh\necho ran\n"


@pytest.fixture(scope="module")
def m(peafs_module_mount, tmp_path_factory):
    root = tmp_path_factory.mktemp("rules_ops") / "root"
    root.mkdir()
    tree(root, {
        "ro/": {"f": "RO", "sub/": {}},
        "rw/": {"f": "RW", "locked": "LOCKED", "sub/": {}, "a": "A"},
        "none/": {"f": "NONE"},
        "hidden/": {"f": "H"},
        "bin/": {"prog": SCRIPT},
        "rbin/": {"prog": SCRIPT},
        "pipes/": {},
    })
    for p in ("bin/prog", "rbin/prog"):
        (root / p).chmod(0o755)
    for name in ("wfifo", "rfifo", "rwfifo", "nofifo", "nonefifo"):
        os.mkfifo(root / "pipes" / name, 0o666)
    os.setxattr(root / "none" / "f", "user.k", b"v")
    os.setxattr(root / "ro" / "f", "user.k", b"v")
    # A real file capability (VFS_CAP_REVISION_2, effective, CAP_NET_RAW):
    # never shown in a pod (test_file_capabilities_are_never_shown).
    os.setxattr(root / "ro" / "f", "security.capability",
                struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0))
    mount = peafs_module_mount(POLICY, root=root)
    # Sockets must be bound by a live server: one in pea "all" for the test.
    return mount


def test_file_capabilities_are_never_shown(m):
    # The kernel asks for security.capability before every write; the
    # answer is ENODATA for every caller, whatever the staging file holds
    # (file capabilities never apply on a nosuid mount), and it is given in
    # libfuse's dispatch (fuse_caches.c). Any other name still reaches
    # PeaFS and its rules.
    got = run_snippet(m, "all", 'out = [E(os.getxattr, "ro/f", "security.capability"), '
                                'E(os.getxattr, "ro/f", "user.k")]')
    assert got == ["ENODATA", "OK"]
    got = run_snippet(m, "p", 'out = [E(os.getxattr, "none/f", "security.capability"), '
                              'E(os.getxattr, "none/f", "user.k")]')
    assert got == ["ENODATA", "EACCES"]


def test_reading(m):
    got = run_snippet(m, "p", r'''
out = {
  "read_ro": E(read, "ro/f"),
  "read_none": E(read, "none/f"),
  "read_hidden": E(read, "hidden/f"),
  "list_ro": E(listdir, "ro"),
  "list_none_itself": E(listdir, "none"),       # "/none" = "r": the dir itself
  "list_hidden": E(listdir, "hidden/"),         # "/hidden/" covers below, "/" = "r" covers it
  "list_sub_of_none": E(listdir, "ro/sub"),
  "write_ro": E(opens, "ro/f", os.O_WRONLY),
  "rdwr_ro": E(opens, "ro/f", os.O_RDWR),
  "trunc_flag_ro": E(opens, "ro/f", os.O_RDONLY | os.O_TRUNC),
  "write_rw": E(opens, "rw/f", os.O_WRONLY),
  "rdwr_rw": E(opens, "rw/f", os.O_RDWR),
  "write_locked": E(opens, "rw/locked", os.O_WRONLY),
}
''')
    assert got == {
        "read_ro": "OK", "read_none": "EACCES", "read_hidden": "EACCES",
        "list_ro": "OK", "list_none_itself": "OK", "list_hidden": "OK",
        "list_sub_of_none": "OK",
        "write_ro": "EACCES", "rdwr_ro": "EACCES", "trunc_flag_ro": "EACCES",
        "write_rw": "OK", "rdwr_rw": "OK", "write_locked": "EACCES",
    }
    assert (m.root / "ro" / "f").read_text() == "RO"


def test_seeing_is_never_refused(m):
    got = run_snippet(m, "p", r'''
os.symlink("f", "rw/ln_to_f") if not os.path.lexists("rw/ln_to_f") else None
out = {
  "stat_none": E(os.stat, "none/f"),
  "stat_hidden": E(os.stat, "hidden/f"),
  "lstat": E(os.lstat, "rw/ln_to_f"),
  "readlink": os.readlink("rw/ln_to_f"),
  "listxattr_none": os.listxattr("none/f"),
  "getxattr_none": E(os.getxattr, "none/f", "user.k"),
  "getxattr_ro": E(os.getxattr, "ro/f", "user.k"),
  "walk_hidden": E(os.stat, "hidden/../hidden/f"),
}
''')
    assert got == {"stat_none": "OK", "stat_hidden": "OK", "lstat": "OK", "readlink": "f",
                   "listxattr_none": ["user.k"], "getxattr_none": "EACCES",
                   "getxattr_ro": "OK", "walk_hidden": "OK"}


def test_writing_metadata(m):
    got = run_snippet(m, "p", r'''
out = {
  "truncate_ro": E(os.truncate, "ro/f", 0),
  "chmod_ro": E(os.chmod, "ro/f", 0o600),
  "chown_ro": E(os.chown, "ro/f", 5, 5),
  "utime_ro": E(os.utime, "ro/f", (1, 1)),
  "setxattr_ro": E(os.setxattr, "ro/f", "user.n", b"1"),
  "removexattr_ro": E(os.removexattr, "ro/f", "user.k"),
  "truncate_rw": E(os.truncate, "rw/a", 1),
  "chmod_rw": E(os.chmod, "rw/a", 0o640),
  "chown_rw": E(os.chown, "rw/a", 5, 6),
  "utime_rw": E(os.utime, "rw/a", (1, 1)),
  "setxattr_rw": E(os.setxattr, "rw/a", "user.n", b"1"),
  "removexattr_rw": E(os.removexattr, "rw/a", "user.n"),
  "trusted_xattr": E(os.setxattr, "rw/a", "trusted.n", b"1"),
}
''')
    assert got == {
        "truncate_ro": "EACCES", "chmod_ro": "EACCES", "chown_ro": "EACCES",
        "utime_ro": "EACCES", "setxattr_ro": "EACCES", "removexattr_ro": "EACCES",
        "truncate_rw": "OK", "chmod_rw": "OK", "chown_rw": "OK", "utime_rw": "OK",
        "setxattr_rw": "OK", "removexattr_rw": "OK",
        # trusted.* needs CAP_SYS_ADMIN of the host: the kernel refuses first.
        "trusted_xattr": "EPERM",
    }
    st = os.stat(m.root / "rw" / "a")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777, st.st_size) == (5, 6, 0o640, 1)
    assert os.stat(m.root / "ro" / "f").st_size == 2


def test_names_in_directories(m):
    got = run_snippet(m, "p", r'''
out = {
  "create_ro": E(opens, "ro/new", os.O_WRONLY | os.O_CREAT),
  "mkdir_ro": E(os.mkdir, "ro/newdir"),
  "symlink_ro": E(os.symlink, "f", "ro/newlink"),
  "mkfifo_ro": E(os.mkfifo, "ro/newfifo"),
  "mknod_ro": E(os.mknod, "ro/newnode", 0o644 | stat.S_IFREG),
  "link_ro": E(os.link, "rw/f", "ro/hard"),
  "unlink_ro": E(os.unlink, "ro/f"),
  "rmdir_ro": E(os.rmdir, "ro/sub"),
  "rename_in_ro": E(os.rename, "ro/f", "ro/g"),
  "rename_ro_to_rw": E(os.rename, "ro/f", "rw/from_ro"),
  "rename_rw_to_ro": E(os.rename, "rw/a", "ro/from_rw"),
  "unlink_locked": E(os.unlink, "rw/locked"),
  "replace_locked": E(os.rename, "rw/f", "rw/locked"),
  "rename_locked": E(os.rename, "rw/locked", "rw/moved"),
  "rename_rw_dir_itself": E(os.rename, "rw", "rw2"),      # needs w on "/"
  "create_rw": E(opens, "rw/new", os.O_WRONLY | os.O_CREAT),
  "mkdir_rw": E(os.mkdir, "rw/newdir"),
  "symlink_rw": E(os.symlink, "f", "rw/newlink"),
  "mkfifo_rw": E(os.mkfifo, "rw/newfifo"),
  "mknod_rw": E(os.mknod, "rw/newnode", 0o644 | stat.S_IFREG),
  "rename_rw": E(os.rename, "rw/new", "rw/renamed"),
  "unlink_rw": E(os.unlink, "rw/renamed"),
  "rmdir_rw": E(os.rmdir, "rw/newdir"),
  "create_in_root": E(opens, "newtop", os.O_WRONLY | os.O_CREAT),
}
''')
    assert got == {
        "create_ro": "EACCES", "mkdir_ro": "EACCES", "symlink_ro": "EACCES",
        "mkfifo_ro": "EACCES", "mknod_ro": "EACCES", "link_ro": "EACCES",
        "unlink_ro": "EACCES", "rmdir_ro": "EACCES", "rename_in_ro": "EACCES",
        "rename_ro_to_rw": "EACCES", "rename_rw_to_ro": "EACCES",
        "unlink_locked": "EACCES", "replace_locked": "EACCES", "rename_locked": "EACCES",
        "rename_rw_dir_itself": "EACCES",
        "create_rw": "OK", "mkdir_rw": "OK", "symlink_rw": "OK", "mkfifo_rw": "OK",
        "mknod_rw": "OK", "rename_rw": "OK", "unlink_rw": "OK", "rmdir_rw": "OK",
        "create_in_root": "EACCES",
    }
    assert sorted(os.listdir(m.root / "ro")) == ["f", "sub"]
    assert (m.root / "rw" / "locked").read_text() == "LOCKED"


def test_rename_flags_need_w_on_both_entries(m):
    got = run_snippet(m, "p", r'''
libc = ctypes.CDLL(None, use_errno=True)
def rn(a, b, flags):
    if libc.renameat2(-100, a.encode(), -100, b.encode(), flags) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")
write("rw/x1", b"1"); write("rw/x2", b"2")
out = {
  "exchange_locked": E(rn, "rw/x1", "rw/locked", 2),
  "exchange_ro": E(rn, "rw/x1", "ro/f", 2),
  "noreplace_locked": E(rn, "rw/x1", "rw/locked", 1),
  "exchange_ok": E(rn, "rw/x1", "rw/x2", 2),
  "x1": read("rw/x1"),
}
''')
    assert got == {"exchange_locked": "EACCES", "exchange_ro": "EACCES",
                   "noreplace_locked": "EEXIST", "exchange_ok": "OK", "x1": "2"}


def test_exec_needs_x(m):
    got = run_snippet(m, "p", r'''
import subprocess
def run(path):
    return subprocess.run([path], capture_output=True, text=True).stdout
out = {"x_only": E(run, "./bin/prog"), "r_only": E(run, "./rbin/prog"),
       "read_x_only": E(read, "bin/prog"), "out": run("./bin/prog")}
''')
    # A script needs x to be executed and r for its interpreter to read it:
    # x alone starts the exec, and /bin/sh's open of the script is refused.
    assert got["x_only"] == "OK" and got["r_only"] == "EACCES"
    assert got["read_x_only"] == "EACCES"
    got_all = run_snippet(m, "all", r'''
import subprocess
out = subprocess.run(["./bin/prog"], capture_output=True, text=True).stdout
''')
    assert got_all == "ran\n"


def test_device_nodes_refused_even_with_rwx(m):
    got = run_snippet(m, "all", r'''
out = {"chr": E(os.mknod, "rw/dev", 0o600 | stat.S_IFCHR, os.makedev(1, 3)),
       "blk": E(os.mknod, "rw/blk", 0o600 | stat.S_IFBLK, os.makedev(8, 0))}
''')
    assert got == {"chr": "EPERM", "blk": "EPERM"}
    assert not (m.root / "rw" / "dev").exists()


def test_fifos_guarded_even_against_pod_root(m):
    got = run_snippet(m, "p", r'''
N = os.O_NONBLOCK
out = {
  "w_write": E(opens, "pipes/wfifo", os.O_WRONLY | N),   # no reader: ENXIO means allowed
  "w_read": E(opens, "pipes/wfifo", os.O_RDONLY | N),
  "r_read": E(opens, "pipes/rfifo", os.O_RDONLY | N),
  "r_write": E(opens, "pipes/rfifo", os.O_WRONLY | N),
  "dir_r_read": E(opens, "pipes/nofifo", os.O_RDONLY | N),   # "/pipes/" = "r"
  "dir_r_write": E(opens, "pipes/nofifo", os.O_WRONLY | N),
  "none_read": E(opens, "pipes/nonefifo", os.O_RDONLY | N),
  "none_write": E(opens, "pipes/nonefifo", os.O_WRONLY | N),
  "rw_read": E(opens, "pipes/rwfifo", os.O_RDONLY | N),
  "stat": E(os.stat, "pipes/nofifo"),
}
''')
    assert got == {"w_write": "ENXIO", "w_read": "EACCES", "r_read": "OK", "r_write": "EACCES",
                   "dir_r_read": "OK", "dir_r_write": "EACCES",
                   "none_read": "EACCES", "none_write": "EACCES",
                   "rw_read": "OK", "stat": "OK"}
    # The same FIFOs, right after, for a pea with rwx: the answers are per
    # pea (timeouts 0), not a cached refusal.
    got = run_snippet(m, "all", r'''
out = [E(opens, "pipes/nonefifo", os.O_RDONLY | os.O_NONBLOCK),
       E(opens, "pipes/rfifo", os.O_WRONLY | os.O_NONBLOCK)]
''')
    assert got == ["OK", "ENXIO"]


@contextlib.contextmanager
def _socket_server(m):
    """pipes/wsock and pipes/nosock listening, served by pea "all" (a
    long-lived server: .run waits for its command, so Popen directly)."""
    from peafs_support import peafs_cmd
    proc = subprocess.Popen(
        peafs_cmd("run", m.mountpoint, "--pea", "all", "--", "/usr/bin/python3", "-I", "-S", "-c", r'''
import socket, os, sys
socks = []
for name in ("pipes/wsock", "pipes/nosock"):
    if os.path.lexists(name): os.unlink(name)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind(name); s.listen(64); socks.append(s)
print("ready", flush=True)
sys.stdin.read()
'''), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=m.env())
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_sockets_guarded_even_against_pod_root(m):
    with _socket_server(m):
        got = run_snippet(m, "p", r'''
out = {"w": E(connect, "pipes/wsock"), "none": E(connect, "pipes/nosock")}
''')
        assert got == {"w": "OK", "none": "EACCES"}
        got = run_snippet(m, "other", r'''
out = E(connect, "pipes/nosock")
''')
        assert got == "OK"
        # Right after another pea was let in: refused again (the kernel
        # keeps the name, never that pea's attributes).
        got = run_snippet(m, "p", r'''
out = E(connect, "pipes/nosock")
''')
        assert got == "EACCES"


def test_a_socket_s_name_is_kept_and_its_attributes_asked_at_every_connect(m, tmp_path):
    # The kernel keeps a socket's name like any other (the same for every
    # caller), so 50 connects make no LOOKUP of it (an O_PATH open of the
    # name in the daemon); its attributes are still the caller's, asked at
    # each connect, so the pea refused stays refused at every one of them.
    with _socket_server(m):
        run_snippet(m, "p", 'out = E(connect, "pipes/wsock")')      # the first lookup
        lookups, got = daemon_calls(m, "openat", "p", r'''
out = [E(connect, "pipes/wsock") for _ in range(50)] + [E(connect, "pipes/nosock") for _ in range(50)]
''', tmp_path, containing="sock")
        assert got == ["OK"] * 50 + ["EACCES"] * 50
        assert lookups <= 1, f"{lookups} lookups of the sockets for 100 connects"



def test_unix_checks_still_apply(m):
    """The pea mask is ANDed with the ordinary Unix checks."""
    (m.root / "rw" / "private").write_text("P")
    (m.root / "rw" / "private").chmod(0o600)
    got = run_snippet(m, "p", r'''
out = {"read": E(read, "rw/private"), "write": E(opens, "rw/private", os.O_WRONLY)}
''', 1000)
    assert got == {"read": "EACCES", "write": "EACCES"}
    got = run_snippet(m, "p", r'''
out = E(read, "rw/private")
''', 0)
    assert got == "OK"


def test_callers_outside_the_pod_get_eacces(m, peafs_module_mount):
    mp = str(m.mountpoint)
    # A host process (real root, in no pea): refused everything, even stat
    # of a name the kernel has not cached.
    got = in_subprocess_as_host(rf'''
mp = {mp!r}
out = {{"list": E(listdir, mp), "read": E(read, mp + "/ro/f"),
       "stat_uncached": E(os.stat, mp + "/ro/never-looked-up"),
       "create": E(opens, mp + "/rw/host", os.O_WRONLY | os.O_CREAT)}}
''')
    assert got == {"list": "EACCES", "read": "EACCES", "stat_uncached": "EACCES",
                   "create": "EACCES"}
    # A process in a pea of another pod: refused too.
    other = peafs_module_mount('[pea.all.files]\n"/" = "rwx"\n')
    got = in_subprocess_as_host(rf'''
mp = {mp!r}
out = {{"list": E(listdir, mp), "read": E(read, mp + "/ro/f")}}
''', preexec=run_in_pea(other.pod, "all"))
    assert got == {"list": "EACCES", "read": "EACCES"}
    assert not (m.root / "rw" / "host").exists()


def test_mount_points_in_the_staging_tree_are_crossed(peafs_mount, tmp_path):
    """A read-only host directory bound into the staging root (as pods do
    with [[pod.mount]]) is reachable through PeaFS, stays read-only, and its
    ".." is the staging directory, not the host's."""
    root = tmp_path / "root"
    (root / "usr2").mkdir(parents=True)
    host = tmp_path / "hostdir"
    (host / "sub").mkdir(parents=True)
    (host / "sub" / "file").write_text("FROM HOST")
    subprocess.run(["mount", "--bind", str(host), str(root / "usr2")], check=True, timeout=30)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(root / "usr2")], check=True,
                       timeout=30)
        m = peafs_mount('[pea.all.files]\n"/" = "rwx"\n[pea.p.files]\n"/" = "r"\n"/usr2/sub/" = ""\n',
                        root=root)
        try:
            got = run_snippet(m, "all", r'''
out = {"read": read("usr2/sub/file"), "list": os.listdir("usr2"),
       "write": E(opens, "usr2/sub/file", os.O_WRONLY), "mkdir": E(os.mkdir, "usr2/new"),
       "dotdot_is_root": os.stat("usr2/..").st_ino == os.stat(".").st_ino,
       "dotdot_list": sorted(os.listdir("usr2/sub/../..")),
       "distinct": os.stat("usr2").st_ino != os.stat(".").st_ino}
''')
            assert got == {"read": "FROM HOST", "list": ["sub"], "write": "EROFS",
                           "mkdir": "EROFS", "dotdot_is_root": True, "dotdot_list": ["usr2"],
                           "distinct": True}
            assert run_snippet(m, "p", 'out = E(read, "usr2/sub/file")') == "EACCES"
        finally:
            m.umount()
    finally:
        subprocess.run(["umount", "-l", str(root / "usr2")], timeout=30)
