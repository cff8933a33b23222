"""Pod-planted symlinks never lead PeaFS out of the staging directory.

The kernel resolves a symlink in the *caller's* root, which for a pod
process is the PeaFS mount: there, "/etc/passwd"-style and "../../.." targets
stay inside. The daemon, though, runs on the host: if it ever resolved a
pod-written name as a path (open("staging/link"), chown of a symlink by
/proc/self/fd, link() that follows), a link to a host file would hand the pod
that file. These tests plant links to a canary next to the staging directory
and try every operation that reaches the daemon on the link itself.
"""

from __future__ import annotations

import json
import os

from helpers_attack import host_tree, make_outside, policy, run_py

POLICY_ALL = policy('[pea.all.files]\n"/" = "rwx"\n')

PLANT_AND_ATTACK = r'''
targets = json.loads(ARGS[0])
os.makedirs("/sub/deep")
res = {}
for name, target in targets.items():
    for where in ("/", "/sub/deep/"):
        p = where + name
        os.symlink(target, p)
        def create_inside():
            os.close(os.open(p + "/planted", os.O_WRONLY | os.O_CREAT, 0o666))
        def open_write():
            os.close(os.open(p, os.O_WRONLY))
        res[p] = {
            "readlink": os.readlink(p) == target,
            "read": try_read(p),
            "read_below": try_read(p + "/secret"),
            "list": attempt(os.listdir, p),
            "open_write": attempt(open_write),
            "create_below": attempt(create_inside),
            "truncate": attempt(os.truncate, p, 0),
            "chmod": attempt(os.chmod, p, 0o600),
            "lchown": attempt(os.chown, p, 0, 0, follow_symlinks=False),
            "lutime": attempt(os.utime, p, (1, 1), follow_symlinks=False),
            "link_nofollow": attempt(os.link, p, p + ".hl", follow_symlinks=False),
            "lsetxattr": attempt(os.setxattr, p, "user.pwn", b"1", follow_symlinks=False),
        }
report(res)
'''

# What each operation must give on a link whose target does not exist inside
# the pod: the kernel follows it inside the mount and finds nothing (ENOENT);
# operations on the link itself succeed on the link (and only on it); user
# xattrs on a symlink are refused by the VFS (EPERM).
EXPECTED = {
    "readlink": True,
    "read": "ENOENT",
    "read_below": "ENOENT",
    "list": "ENOENT",
    "open_write": "ENOENT",
    "create_below": "ENOENT",
    "truncate": "ENOENT",
    "chmod": "ENOENT",
    "lchown": "OK",
    "lutime": "OK",
    "link_nofollow": "OK",
    "lsetxattr": "EPERM",
}


def test_planted_symlinks_never_reach_host_files(peafs_mount, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside, canary = make_outside(tmp_path)
    secret = outside / "secret"
    before_tree = host_tree(outside)
    before = os.stat(secret)
    rel_from_root = os.path.relpath(secret, root)            # "../outside/secret"
    targets = {
        "abs": str(secret),                                  # absolute host path
        "absdir": str(outside),
        "rel": rel_from_root,
        "reldir": os.path.relpath(outside, root),
        "dotdots": "../" * 16 + str(secret).lstrip("/"),      # climbs past any root
    }
    m = peafs_mount(POLICY_ALL, root=root)
    got = run_py(m, "all", PLANT_AND_ATTACK, json.dumps(targets))

    assert canary not in json.dumps(got), "a pod process read the host canary"
    for path, ops in got.items():
        assert ops == EXPECTED, f"{path}: {ops}"
    # Nothing outside changed: no new file, same content, no link, no
    # ownership/time/xattr change that a daemon-side follow would have made.
    assert host_tree(outside) == before_tree
    after = os.stat(secret)
    assert after.st_nlink == 1
    assert (after.st_uid, after.st_gid, after.st_mode, after.st_mtime_ns) == (
        before.st_uid, before.st_gid, before.st_mode, before.st_mtime_ns)
    assert "user.pwn" not in os.listxattr(secret)
    # The operations landed on the links inside the staging directory.
    for name, target in targets.items():
        assert os.readlink(root / name) == target
        assert os.readlink(root / f"{name}.hl") == target
        assert os.lstat(root / name).st_mtime == 1


def test_symlink_planted_from_host_side_is_not_followed_by_daemon(peafs_mount, tmp_path):
    """A link already in the staging tree (left by a previous pod, restored
    from a backup) is as untrusted as one made by the pod."""
    root = tmp_path / "root"
    root.mkdir()
    outside, canary = make_outside(tmp_path)
    (root / "abs").symlink_to(outside / "secret")
    (root / "dir").symlink_to(outside)
    before_tree = host_tree(outside)
    m = peafs_mount(POLICY_ALL, root=root)
    got = run_py(m, "all", r'''
report({
    "abs": try_read("/abs"),
    "dir_secret": try_read("/dir/secret"),
    "dir_list": attempt(os.listdir, "/dir"),
    "create": attempt(lambda: os.close(os.open("/dir/new", os.O_WRONLY | os.O_CREAT, 0o666))),
    "mkdir": attempt(os.mkdir, "/dir/newdir"),
    "lchown": attempt(os.chown, "/abs", 0, 0, follow_symlinks=False),
})
''')
    assert got == {"abs": "ENOENT", "dir_secret": "ENOENT", "dir_list": "ENOENT",
                   "create": "ENOENT", "mkdir": "ENOENT", "lchown": "OK"}
    assert host_tree(outside) == before_tree
