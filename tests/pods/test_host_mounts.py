"""[[pod.mount]] host directories and the mounts below them
(pods/rootfs.py place_host_mounts).

A host directory is bound recursively, as bubblewrap binds: a mount the
host has below it stays in place in the pod. A non-recursive bind would
uncover the files under the mount point, which the host's mount hides (a
stale copy, secrets left before a file system was mounted over them), and
leave out what the mount shows. Read-only must then cover every submount,
or a read-only /data would hold a writable host file system.
"""

from __future__ import annotations

from pods import namespaces as ns


def test_a_mount_under_a_host_directory_stays_covered_and_read_only(pod_factory, tmp_path):
    host = tmp_path / "hostdir"
    (host / "sub").mkdir(parents=True)
    (host / "sub" / "hidden").write_text("under the mount point\n")
    ns.mount("tmpfs", str(host / "sub"), "tmpfs", 0, "size=1m,mode=0755")
    try:
        (host / "sub" / "shown").write_text("on the mount\n")
        pod = pod_factory.start(mounts=[("/usr", "/usr", False), (host, "/data", False)])
        r = pod.exec("/bin/ls", "/data/sub")
        assert (r.returncode, r.stdout) == (0, "shown\n"), r
        r = pod.exec("/bin/cat", "/data/sub/hidden")
        assert r.returncode == 1
        assert r.stderr == "/bin/cat: /data/sub/hidden: No such file or directory\n"
        r = pod.exec("/bin/sh", "-c", "echo x > /data/sub/new")
        assert r.returncode == 2
        assert r.stderr == "/bin/sh: 1: cannot create /data/sub/new: Read-only file system\n"
        r = pod.exec("/bin/sh", "-c", "echo x > /data/new")
        assert r.stderr == "/bin/sh: 1: cannot create /data/new: Read-only file system\n"
        assert not (host / "sub" / "new").exists() and not (host / "new").exists()
        assert pod.stop().returncode == 0
    finally:
        ns.umount2(str(host / "sub"), ns.MNT_DETACH)


def test_a_rw_host_directory_is_writable_below_too(pod_factory, tmp_path):
    host = tmp_path / "hostdir"
    (host / "sub").mkdir(parents=True)
    ns.mount("tmpfs", str(host / "sub"), "tmpfs", 0, "size=1m,mode=0777")
    try:
        pod = pod_factory.start(mounts=[("/usr", "/usr", False), (host, "/data", True)])
        r = pod.exec("/bin/sh", "-c", "echo x > /data/sub/new && cat /data/sub/new")
        assert (r.returncode, r.stdout) == (0, "x\n"), r
        assert (host / "sub" / "new").read_text() == "x\n"
        assert pod.stop().returncode == 0
    finally:
        ns.umount2(str(host / "sub"), ns.MNT_DETACH)
