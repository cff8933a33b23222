"""".." at the pod root stays at the root, and chroot cannot be climbed out of.

A pod's root is the PeaFS mount (pivot_root, host tree detached), so the
kernel itself stops ".." at "/": there is no mount above to cross into. The
classic chroot escape (chroot into a subdirectory while keeping a working
directory, or a descriptor, above it, then chdir("..") many times and chroot
(".")) climbs only to the pod root. PeaFS never sees ".." (the kernel resolves
it from its dentry cache), so what these tests prove is the whole barrier:
staging directory + pivot + PeaFS, with a canary right next to the staging
directory as the thing to reach.
"""

from __future__ import annotations

import os

from helpers_attack import make_outside, policy, run_py

POLICY_ALL = policy('[pea.all.files]\n"/" = "rwx"\n')


def _staging(tmp_path):
    root = tmp_path / "root"
    (root / "d" / "e").mkdir(parents=True)
    (root / "x").write_text("INSIDE-X")
    (root / "jail").mkdir()
    outside, canary = make_outside(tmp_path)
    return root, outside, canary


def test_dotdot_at_pod_root_stays_at_root(peafs_mount, tmp_path):
    root, outside, canary = _staging(tmp_path)
    escape = os.path.relpath(outside / "secret", root)           # ../outside/secret
    m = peafs_mount(POLICY_ALL, root=root)
    got = run_py(m, "all", r'''
os.chdir("/")
os.chdir("..")
after_cd = sorted(os.listdir("."))
os.chdir("../../../../..")
deep = sorted(os.listdir("."))
st_root, st_up = os.stat("/"), os.stat("/..")
os.chdir("/d/e")
report({
    "after_cd": after_cd,
    "deep": deep,
    "same_inode": (st_root.st_dev, st_root.st_ino) == (st_up.st_dev, st_up.st_ino),
    "x_abs": try_read("/../../x"),
    "x_rel": try_read("../../../../../../x"),
    "escape_abs": try_read("/" + ARGS[0]),
    "escape_rel": try_read("../../../../../../" + ARGS[0]),
    "escape_create": attempt(lambda: os.close(os.open("/../outside/new", os.O_WRONLY | os.O_CREAT))),
    "cwd_after_climb": (os.chdir("../../../../.."), sorted(os.listdir(".")))[1],
})
''', escape)
    names = sorted(os.listdir(root))
    assert got == {
        "after_cd": names,
        "deep": names,
        "same_inode": True,
        "x_abs": "INSIDE-X",
        "x_rel": "INSIDE-X",
        "escape_abs": "ENOENT",
        "escape_rel": "ENOENT",
        "escape_create": "ENOENT",
        "cwd_after_climb": names,
    }
    assert sorted(os.listdir(outside)) == ["secret"]


def test_chroot_escape_stays_inside_staging_root(peafs_mount, tmp_path):
    root, outside, canary = _staging(tmp_path)
    escape = os.path.relpath(outside / "secret", root)
    m = peafs_mount(POLICY_ALL, root=root)
    got = run_py(m, "all", r'''
res = {}
# 1. chroot into a subdirectory, working directory left above it.
old_root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
os.chroot("/jail")
for _ in range(64):
    os.chdir("..")
os.chroot(".")
res["cwd_climb"] = sorted(os.listdir("/"))
res["cwd_escape"] = try_read("/" + ARGS[0])
# 2. chroot again, then climb from a descriptor opened before it.
os.chroot("/jail")
os.fchdir(old_root)
for _ in range(64):
    os.chdir("..")
os.chroot(".")
res["fd_climb"] = sorted(os.listdir("/"))
res["fd_escape"] = try_read("/" + ARGS[0])
res["fd_relative"] = try_read("../../../../" + ARGS[0])
# 3. openat(old_root, "../..") after the chroot.
os.chroot("/jail")
up = os.open("../../..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=old_root)
res["openat_climb"] = sorted(os.listdir(up))
res["openat_escape"] = attempt(os.open, ARGS[0], os.O_RDONLY, dir_fd=up)
report(res)
''', escape)
    names = sorted(os.listdir(root))
    assert got == {
        "cwd_climb": names, "cwd_escape": "ENOENT",
        "fd_climb": names, "fd_escape": "ENOENT", "fd_relative": "ENOENT",
        "openat_climb": names, "openat_escape": "ENOENT",
    }
    assert canary not in str(got)
