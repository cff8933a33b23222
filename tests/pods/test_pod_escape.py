"""Pod root tries to get out, and gets the exact error.

Each snippet runs as pod root (uid 0, every capability of the pod's user
namespace) through ``pod exec``; it prints an errno name or a marker, and the
test asserts it. Calls refused by the seccomp filter are helper E's tests
(tests/pods/test_seccomp*); here: what the namespaces, the pivot and the
cgroup ownership refuse.
"""

from __future__ import annotations

import os

PRELUDE = r'''
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def err(f, *a):
    try:
        f(*a)
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
def mount(src, tgt, fs, flags=0, data=None):
    if libc.mount(src.encode(), tgt.encode(), fs.encode(), flags,
                  data.encode() if data else None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
def umount(tgt):
    if libc.umount2(tgt.encode(), 2) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
os.makedirs("/tmp/m", exist_ok=True)
'''


def run(pod, code: str, **kw) -> list[str]:
    r = pod.py(PRELUDE + code, **kw)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_mounting_host_devices_and_sysfs_is_eperm(shared_pod):
    out = run(shared_pod, """
print(err(mount, "/dev/vda", "/tmp/m", "ext4"))
print(err(mount, "/dev/sda1", "/tmp/m", "xfs"))
print(err(mount, "sysfs", "/tmp/m", "sysfs"))
""")
    # Block-device file systems are not mountable in a user namespace;
    # sysfs needs a visible sysfs in the mount namespace, and there is none.
    assert out == ["EPERM", "EPERM", "EPERM"]


def test_mknod_of_devices_is_eperm(shared_pod):
    out = run(shared_pod, """
print(err(os.mknod, "/tmp/sda", 0o600 | 0o060000, os.makedev(8, 0)))
print(err(os.mknod, "/tmp/mem", 0o600 | 0o020000, os.makedev(1, 1)))
print(err(os.mknod, "/dev/shm/kmsg", 0o600 | 0o020000, os.makedev(1, 11)))
""")
    assert out == ["EPERM", "EPERM", "EPERM"]
    assert not (shared_pod.root / "tmp" / "sda").exists()


def test_chroot_double_escape_stays_in_the_pod(shared_pod):
    out = run(shared_pod, """
pod_root = sorted(os.listdir("/"))
os.makedirs("/tmp/jail/inner", exist_ok=True)
keep = os.open("/", os.O_RDONLY)
os.chroot("/tmp/jail")
# classic escape 1: chdir out through "..", then chroot(".")
for _ in range(20):
    os.chdir("..")
os.chroot(".")
print(sorted(os.listdir("/")) == pod_root)
# classic escape 2: an fd of the old root, fchdir, "..", chroot(".")
os.chroot("/tmp/jail/inner")
os.fchdir(keep)
for _ in range(20):
    os.chdir("..")
os.chroot(".")
print(sorted(os.listdir("/")) == pod_root)
print(err(os.stat, "/work"), err(os.stat, "/root/.pyenv"))
""")
    assert out == ["True", "True", "ENOENT", "ENOENT"]


def test_proc_paths_lead_nowhere_outside(shared_pod):
    daemon = shared_pod.state()["daemon_pid"]
    out = run(shared_pod, f"""
pod_root = sorted(os.listdir("/"))
# pid 1 is not dumpable: its root, cwd, fds and memory are closed to pod root.
print(err(os.listdir, "/proc/1/root"), err(os.readlink, "/proc/1/cwd"),
      err(os.open, "/proc/1/mem", os.O_RDONLY), err(os.listdir, "/proc/1/fd"))
# the host's processes do not exist here
print(err(os.stat, "/proc/{daemon}/root"))
# /proc/self tricks resolve inside the pod's root
print(sorted(os.listdir("/proc/self/root/../../..")) == pod_root)
os.chdir("/tmp")
print(sorted(os.listdir("/proc/self/cwd/../../../..")) == pod_root)
print(os.readlink("/proc/self/root"))
# the old root is gone: no host mount in the pod's table
print(sorted({{l.split()[4] for l in open("/proc/self/mountinfo")}}) ==
      sorted(["/", "/proc", "/dev", "/dev/null", "/dev/zero", "/dev/full", "/dev/random",
              "/dev/urandom", "/dev/tty", "/dev/pts", "/dev/shm"]))
""")
    assert out == ["EACCES", "EACCES", "EACCES", "EACCES", "ENOENT", "True", "True", "/", "True"]


def test_host_kernel_knobs_are_eacces(shared_pod):
    out = run(shared_pod, """
print(err(os.open, "/proc/sys/kernel/core_pattern", os.O_WRONLY))
print(err(os.open, "/proc/sys/fs/file-max", os.O_WRONLY))
print(err(os.open, "/proc/sys/vm/drop_caches", os.O_WRONLY))
""")
    assert out == ["EACCES", "EACCES", "EACCES"]


def test_pod_root_cannot_leave_its_pea_or_raise_its_limits(pods):
    pod = pods.start(limits_={"pids": 50})
    out = run(pod, """
# cgroup2 mounts fine in the pod's cgroup namespace (it shows the pod's
# subtree only), but its files belong to host root: no pea change.
mount("none", "/tmp/m", "cgroup2")
print(sorted(d for d in os.listdir("/tmp/m") if not d.startswith(("cgroup", "cpu", "io", "memory"))))
print(err(lambda: open("/tmp/m/other/cgroup.procs", "w").write("0\\n")))
print(err(lambda: open("/tmp/m/cgroup.kill", "w").write("1\\n")))
umount("/tmp/m")
mount("none", "/tmp/m", "cgroup", 0, "pids")
print(open("/tmp/m/pids.max").read().strip())
print(err(lambda: open("/tmp/m/pids.max", "w").write("max\\n")))
umount("/tmp/m")
print(open("/proc/self/cgroup").read().splitlines()[-1])
""")
    assert out == ["['main',", "'other']", "EACCES", "EACCES", "50", "EACCES", "0::/main"]
