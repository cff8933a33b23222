"""Pod root tries to get out, and gets the exact error.

Each snippet runs as pod root (uid 0, every capability of the pod's user
namespace) through ``pod exec``; it prints an errno name or a marker, and the
test asserts it. Calls refused by the seccomp filter are tested in test_seccomp_filter.py
(tests/pods/test_seccomp*); here: what the namespaces, the pivot and the
cgroup ownership refuse.
"""

from __future__ import annotations


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
              "/dev/urandom", "/dev/tty", "/dev/pts"]))
""")
    assert out == ["EACCES", "EACCES", "EACCES", "EACCES", "ENOENT", "True", "True", "/", "True"]


def test_host_kernel_knobs_are_read_only(shared_pod):
    """The pod's /proc is mounted read-only: every sysctl write fails there
    (EROFS) before the knob's own check (host root only, EACCES)."""
    out = run(shared_pod, """
print(err(os.open, "/proc/sys/kernel/core_pattern", os.O_WRONLY))
print(err(os.open, "/proc/sys/fs/file-max", os.O_WRONLY))
print(err(os.open, "/proc/sys/vm/drop_caches", os.O_WRONLY))
""")
    assert out == ["EROFS", "EROFS", "EROFS"]


def test_pod_root_cannot_leave_its_pea_or_raise_its_limits(pods):
    pod = pods.start(limits_={"pids": 50})
    out = run(pod, """
# No cgroup file system can be mounted (mount is refused), and the pod has
# no /sys: the pea and limit cgroups are out of reach.
print(err(mount, "none", "/tmp/m", "cgroup2"))
print(err(mount, "none", "/tmp/m", "cgroup", 0, "pids"))
print(err(os.stat, "/sys/fs/cgroup"))
print(open("/proc/self/cgroup").read().splitlines()[-1])
""")
    assert out == ["EPERM", "EPERM", "ENOENT", "0::/main"]


MS_BIND, MS_REMOUNT, MS_NOSUID, MS_NODEV = 4096, 32, 2, 4


def test_pod_root_cannot_mount_over_what_other_peas_see(pods):
    """All peas share the pod's mount namespace: a mount made in one pea
    would change every pea's view (a directory it may write bound over
    /etc feeds planted files to the others; a tmpfs holds programs PeaFS
    never sees executed). Every way of mounting is EPERM, a new mount
    namespace included, and the other pea still reads the real /etc."""
    pod = pods.start(peas='[pea.main.files]\n"/" = "rx"\n"/tmp/" = "rwx"\n"/tmp" = "rw"\n\n'
                          '[pea.other.files]\n"/" = "rx"\n')
    out = run(pod, f"""
CLONE_NEWNS = 0x20000
os.makedirs("/tmp/planted", exist_ok=True)
open("/tmp/planted/passwd", "w").write("evil:x:0:0::/:/bin/sh\\n")
print(err(mount, "/tmp/planted", "/etc", "none", {MS_BIND}))
print(err(mount, "tmpfs", "/tmp/m", "tmpfs"))
print(err(mount, "none", "/dev/shm", "none", {MS_REMOUNT | MS_NOSUID | MS_NODEV}))
print(err(umount, "/dev/shm"))
print(err(umount, "/proc"))
if libc.unshare(CLONE_NEWNS) != 0:
    print("unshare", errno.errorcode[ctypes.get_errno()])
print(err(mount, "tmpfs", "/tmp/m", "tmpfs"))
""", pea="main")
    assert out == ["EPERM"] * 6
    r = pod.exec("cat", "/etc/passwd", pea="other")
    assert r.returncode == 0 and "evil" not in r.stdout and r.stdout.startswith("root:")


def test_programs_run_only_from_peafs(pods):
    """A pea without x on a program it can read copies it to /dev/shm, or
    into a memfd, and executes the copy: EACCES both ways (/dev/shm is the
    PeaFS directory /run/shm, where the pea's rules give no x; vm.memfd_noexec
    = 2 in the pod's pid namespace, since PeaFS would never see the exec of
    a memfd). Pod root cannot lower the sysctl."""
    pod = pods.start(peas='[pea.main.files]\n"/" = "rx"\n"/usr/bin/dash" = "r"\n'
                          '"/tmp/" = "rw"\n"/tmp" = "rw"\n"/run/shm/" = "rw"\n"/run/shm" = "rw"\n')
    out = run(pod, """
import shutil, subprocess
def run_it(path):
    try:
        return str(subprocess.run([path, "-c", "exit 7"], close_fds=False).returncode)
    except OSError as e:
        return errno.errorcode[e.errno]
print(run_it("/usr/bin/dash"))                        # the pea has no x on it
shutil.copy("/usr/bin/dash", "/dev/shm/sh")
os.chmod("/dev/shm/sh", 0o755)
print(run_it("/dev/shm/sh"))
MFD_EXEC = 0x10
print(err(os.memfd_create, "sh", MFD_EXEC))
fd = os.memfd_create("sh", 0)
os.write(fd, open("/usr/bin/dash", "rb").read())
print(err(os.fchmod, fd, 0o755))
print(run_it(f"/proc/self/fd/{fd}"))
print(open("/proc/sys/vm/memfd_noexec").read().strip())
print(err(lambda: open("/proc/sys/vm/memfd_noexec", "w").write("0")))
""")
    assert out == ["EACCES", "EACCES", "EACCES", "EPERM", "EACCES", "2", "EROFS"]


def test_pod_programs_get_umask_022_and_no_daemon_descriptor(pods):
    """The daemon runs with umask 0 (for PeaFS): a pod program gets 022.
    The daemon also holds one O_PATH handle per inode the kernel has looked
    up, so the descriptors it hands the tagger have numbers past 1024 once
    1 500 files were looked up: still, only fds 0, 1, 2 reach the program."""
    pod = pods.start()
    r = pod.py("""
import os
os.makedirs("/tmp/many", exist_ok=True)
for i in range(1500):
    p = f"/tmp/many/f{i}"
    open(p, "w").close()
    os.stat(p)
""")
    assert r.returncode == 0, r.stderr
    out = run(pod, """
print(oct(os.umask(0o22)))
print(",".join(sorted(os.listdir("/proc/self/fd"), key=int)))
""")
    assert out == ["0o22", "0,1,2,3"]     # 3: the listing's own descriptor
