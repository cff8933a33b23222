"""UID/GID virtualisation (SECURITY.md, "User and group ids"): on disk the pod's virtual ids, to the
kernel the pod's host range; a pod process sees its virtual ids again.

Default map of the fixture: pod id U <-> host id 200000 + U (65536 ids).
"""

from __future__ import annotations

import os

from peafs_support import run_in_pea
from helpers_peafs import in_subprocess_as_host, run_snippet

POLICY = '[pea.all.files]\n"/" = "rwx"\n'


def test_run_user_round_trip(peafs_mount):
    m = peafs_mount(POLICY)
    m.root.chmod(0o777)
    got = run_snippet(m, "all", r'''
write("mine", b"1"); os.mkdir("mydir"); os.symlink("mine", "mylink"); os.mkfifo("myfifo")
out = {"ids": [os.getuid(), os.getgid()],
       "stat": [[os.lstat(n).st_uid, os.lstat(n).st_gid] for n in ("mine", "mydir", "mylink", "myfifo")]}
''', 1000)
    assert got == {"ids": [1000, 1000], "stat": [[1000, 1000]] * 4}
    for n in ("mine", "mydir", "mylink", "myfifo"):
        st = os.lstat(m.root / n)
        assert (st.st_uid, st.st_gid) == (1000, 1000), n   # virtual ids on disk


def test_pod_root_owns_root_files_and_chown_translates(peafs_mount):
    m = peafs_mount(POLICY)
    (m.root / "rootfile").write_text("r")           # host root writes uid 0 = pod root
    (m.root / "f").write_text("f")
    got = run_snippet(m, "all", r'''
st = os.stat("rootfile")
os.chown("f", 4321, 65535)
s2 = os.stat("f")
out = {"root": [st.st_uid, st.st_gid], "chowned": [s2.st_uid, s2.st_gid],
       "unmapped": E(os.chown, "f", 70000, -1)}
''', 0)
    # 70000 is not an id of the pod's user namespace: the kernel refuses.
    assert got == {"root": [0, 0], "chowned": [4321, 65535], "unmapped": "EINVAL"}
    st = os.stat(m.root / "f")
    assert (st.st_uid, st.st_gid) == (4321, 65535)


def test_unmapped_disk_ids_show_as_overflow(peafs_mount):
    m = peafs_mount(POLICY)
    (m.root / "stray").write_text("s")
    os.chown(m.root / "stray", 70000, 90000)        # outside the 65536-id map
    got = run_snippet(m, "all", r'''
st = os.stat("stray")
out = [st.st_uid, st.st_gid]
''', 0)
    assert got == [65534, 65534]


def test_host_side_ids_and_refusals(peafs_mount):
    """A pea member without the user namespace sees (and sends) host ids:
    replies carry host ids, chown translates back, unmapped ids are EPERM,
    and a caller whose own id is unmapped cannot create."""
    m = peafs_mount(POLICY)
    (m.root / "f").write_text("f")
    os.chown(m.root / "f", 7, 8)
    mp = str(m.mountpoint)
    got = in_subprocess_as_host(rf'''
mp = {mp!r}
st = os.stat(mp + "/f")
out = {{"host_view": [st.st_uid, st.st_gid],
       "chown_mapped": E(os.chown, mp + "/f", 201000, 201001),
       "chown_unmapped": E(os.chown, mp + "/f", 5, -1),
       "create_as_unmapped_root": E(opens, mp + "/new", os.O_WRONLY | os.O_CREAT),
       "mkdir_as_unmapped_root": E(os.mkdir, mp + "/newd")}}
''', preexec=run_in_pea(m.pod, "all"))
    assert got == {"host_view": [200007, 200008], "chown_mapped": "OK",
                   "chown_unmapped": "EPERM", "create_as_unmapped_root": "EPERM",
                   "mkdir_as_unmapped_root": "EPERM"}
    st = os.stat(m.root / "f")
    assert (st.st_uid, st.st_gid) == (1000, 1001)
    assert not (m.root / "new").exists() and not (m.root / "newd").exists()


def test_one_root_two_pods_with_different_host_ranges(peafs_mount, tmp_path):
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(0o777)
    m1 = peafs_mount(POLICY, root=root, pod=f"u1{os.urandom(3).hex()}")
    m2 = peafs_mount('[pod]\nuid_map = [[0, 300000, 65536]]\ngid_map = [[0, 300000, 65536]]\n'
                     + POLICY, root=root, pod=f"u2{os.urandom(3).hex()}")
    run_snippet(m1, "all", 'write("by1"); out = None', 1000)
    got = run_snippet(m2, "all", r'''
st = os.stat("by1")
out = [st.st_uid, st.st_gid]
''', 0)
    assert got == [1000, 1000]
    mp2 = str(m2.mountpoint)
    host = in_subprocess_as_host(rf'''
st = os.stat({mp2!r} + "/by1")
out = st.st_uid
''', preexec=run_in_pea(m2.pod, "all"))
    assert host == 301000
