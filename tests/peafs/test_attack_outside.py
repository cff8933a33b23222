"""A process that is not in the pod gets EACCES from PeaFS for everything.

SECURITY.md, "The barrier": the host (this test process: root, no pea), a process in the
pod's cgroup but not in one of its peas, a process in a same-named pea of
another pod, and a host process running with a pod user's host uid are all
outside the pod. None of them may read, write, create, remove, rename, list
or even look up anything through the mount.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from helpers_attack import PY, host_tree, policy, py_cmd, results
from peafs_support import peafs_cmd

from kernel import cgroup

POLICY = policy('[pea.all.files]\n"/" = "rwx"\n')


def _attempt(fn, *a, **kw):
    try:
        fn(*a, **kw)
        return "OK"
    except OSError as e:
        return errno.errorcode[e.errno]


def _stage(tmp_path):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "g").write_text("G")
    (root / "f").write_text("F")
    return root


def test_host_process_gets_eacces_for_everything(peafs_mount, tmp_path):
    root = _stage(tmp_path)
    before = host_tree(root)
    m = peafs_mount(POLICY, root=root)
    mp = m.mountpoint
    got = {
        "stat": _attempt(os.stat, mp / "f"),
        "lstat_dir": _attempt(os.lstat, mp / "d"),
        "read": _attempt(lambda: os.close(os.open(mp / "f", os.O_RDONLY))),
        "write": _attempt(lambda: os.close(os.open(mp / "f", os.O_WRONLY))),
        "create": _attempt(lambda: os.close(os.open(mp / "new", os.O_WRONLY | os.O_CREAT))),
        "mkdir": _attempt(os.mkdir, mp / "newdir"),
        "list_root": _attempt(os.listdir, mp),
        "list_dir": _attempt(os.listdir, mp / "d"),
        "unlink": _attempt(os.unlink, mp / "f"),
        "rmdir": _attempt(os.rmdir, mp / "d"),
        "rename": _attempt(os.rename, mp / "f", mp / "f2"),
        "symlink": _attempt(os.symlink, "/etc/passwd", mp / "sym"),
        "link": _attempt(os.link, mp / "f", mp / "f3"),
        "chmod": _attempt(os.chmod, mp / "f", 0o777),
        "truncate": _attempt(os.truncate, mp / "f", 0),
        "mkfifo": _attempt(os.mkfifo, mp / "fifo"),
    }
    assert got == {k: "EACCES" for k in got}
    assert host_tree(root) == before


CHILD = r'''
report({
    "read": try_read(MNT + "/f"),
    "list": attempt(os.listdir, MNT),
    "create": attempt(lambda: os.close(os.open(MNT + "/new", os.O_WRONLY | os.O_CREAT, 0o644))),
})
'''


def _run_in_cgroup(m, cg, uid=0):
    """A host process (no user namespace) placed in cgroup ``cg`` before exec."""
    cg.mkdir(parents=True, exist_ok=True)

    def enter():
        (cg / "cgroup.procs").write_text(str(os.getpid()))
        if uid:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)

    proc = subprocess.run(py_cmd(m.mountpoint, CHILD, enter=False), preexec_fn=enter,
                          capture_output=True, text=True, timeout=60)
    got = results(proc)
    assert len(got) == 1, proc.stderr
    return got[0]


@pytest.mark.parametrize("where", ["pod-cgroup-not-a-pea", "unknown-pea", "other-pod"])
def test_process_in_no_pea_of_this_pod_gets_eacces(peafs_mount, tmp_path, where):
    root = _stage(tmp_path)
    before = host_tree(root)
    m = peafs_mount(POLICY, root=root)
    cgs = {
        "pod-cgroup-not-a-pea": cgroup.pod_cgroup(m.pod),
        "unknown-pea": cgroup.pea_cgroup(m.pod, f"ghost{os.getpid()}"),
        "other-pod": cgroup.pea_cgroup(f"{m.pod}x", "all"),
    }
    cg = cgs[where]
    try:
        got = _run_in_cgroup(m, cg, uid=200000)
    finally:
        if where != "pod-cgroup-not-a-pea":
            cg.rmdir()
        if where == "other-pod":
            cg.parent.rmdir()
    assert got == {"read": "EACCES", "list": "EACCES", "create": "EACCES"}
    assert host_tree(root) == before


def test_pod_uid_without_pea_gets_eacces(peafs_mount, tmp_path):
    """The pod's host uid alone (no pea, no user namespace) grants nothing."""
    root = _stage(tmp_path)
    m = peafs_mount(POLICY, root=root)

    def drop():
        os.setgroups([])
        os.setresgid(200000, 200000, 200000)
        os.setresuid(200000, 200000, 200000)

    proc = subprocess.run(py_cmd(m.mountpoint, CHILD, enter=False), preexec_fn=drop,
                          capture_output=True, text=True, timeout=60)
    assert results(proc) == [{"read": "EACCES", "list": "EACCES", "create": "EACCES"}], \
        proc.stderr


def test_an_absent_name_cached_for_a_pea_lets_an_outsider_see_but_not_touch(peafs_mount,
                                                                          tmp_path):
    """PeaFS answers an absent name with a negative entry (NEGATIVE_TIMEOUT),
    which the kernel then gives to every caller without asking: right after
    a pea found "absent" missing, the host's stat of it is ENOENT, not
    EACCES (seeing, like the positive entries the kernel caches). Touching
    still reaches PeaFS: every create of that name is EACCES, nothing is
    made, and other names stay EACCES."""
    root = _stage(tmp_path)
    before = host_tree(root)
    m = peafs_mount(POLICY, root=root)
    mp = m.mountpoint
    code = ("import os, sys\nprint(os.path.exists(os.path.join(sys.argv[1], 'absent')), "
            "flush=True)\nsys.stdin.readline()\n")
    p = subprocess.Popen(peafs_cmd("run", mp, "--pea", "all", "--", PY, "-I", "-S", "-c", code,
                                   mp), env=m.env(), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().split() == ["False"]
        got = {
            "stat_absent": _attempt(os.stat, mp / "absent"),
            "create": _attempt(lambda: os.close(os.open(mp / "absent",
                                                        os.O_WRONLY | os.O_CREAT, 0o644))),
            "mkdir": _attempt(os.mkdir, mp / "absent"),
            "symlink": _attempt(os.symlink, "/etc/passwd", mp / "absent"),
            "mkfifo": _attempt(os.mkfifo, mp / "absent"),
            "stat_other": _attempt(os.stat, mp / "f"),
        }
        p.stdin.write("\n")
        p.stdin.flush()
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert got == {"stat_absent": "ENOENT", "create": "EACCES", "mkdir": "EACCES",
                   "symlink": "EACCES", "mkfifo": "EACCES", "stat_other": "EACCES"}
    assert host_tree(root) == before
