"""Hard links never widen a pea's rights (docs/FORMAT.md section 9, SECURITY.md "Hard links").

A pea that may write a directory can link into it a file it may access but
not read (x only here; with no letter at all the link itself is refused:
test_attack_transitions.py).
The new name would fall under the directory's rule, so a link made inside a
pod takes, in every pea, a path-specific rule equal to the original path's
rule: reading (or writing) through the link is refused exactly as through the
original. The link rule is state PeaFS keeps; it must survive a daemon
restart, or a pod could plant links and wait for the next mount.
"""

from __future__ import annotations

import subprocess

from helpers_attack import peafs_cli, policy, run_py

POLICY = policy('''
[pea.w.files]
"/d" = "rw"
"/d/" = "rw"
"/secret" = "x"     # a letter on the original: w may link it (FORMAT.md section 9)

[pea.owner.files]
"/" = "rw"
''')

ATTACK = r'''
report({
    "direct": try_read("/secret"),
    "link": attempt(os.link, "/secret", "/d/link"),
    "read_link": try_read("/d/link"),
    "write_link": attempt(os.open, "/d/link", os.O_WRONLY),
    "truncate_link": attempt(os.truncate, "/d/link", 0),
    "link_into_root": attempt(os.link, "/secret", "/link2"),
    "symlink_read": (os.symlink("/secret", "/d/sym"), try_read("/d/sym"))[1],
})
'''

RECHECK = r'''
report({
    "read_link": try_read("/d/link"),
    "write_link": attempt(os.open, "/d/link", os.O_WRONLY),
    "link_again": attempt(os.link, "/d/link", "/d/link3"),
    "read_link3": try_read("/d/link3"),
})
'''


def _unmount(m):
    if hasattr(m, "umount"):
        m.umount()
    else:
        subprocess.run(peafs_cli() + ["umount", str(m.mountpoint)], check=True, timeout=60)


def test_link_inherits_rule_and_survives_restart(peafs_mount, tmp_path):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "secret").write_text("SECRET")
    m = peafs_mount(POLICY, root=root)

    got = run_py(m, "w", ATTACK)
    assert got == {
        "direct": "EACCES",
        "link": "OK",               # w on /d: linking is allowed ...
        "read_link": "EACCES",      # ... but the link carries /secret's rule
        "write_link": "EACCES",
        "truncate_link": "EACCES",
        "link_into_root": "EACCES",  # no w on /
        "symlink_read": "EACCES",   # a symlink resolves to /secret itself
    }
    # The pea the original grants r keeps it through the link.
    assert run_py(m, "owner", 'report(try_read("/d/link"))') == "SECRET"
    assert (root / "secret").read_text() == "SECRET"

    _unmount(m)
    m2 = peafs_mount(POLICY, root=root)
    got = run_py(m2, "w", RECHECK)
    assert got == {
        "read_link": "EACCES",
        "write_link": "EACCES",
        "link_again": "OK",          # a link of the link inherits the same rule
        "read_link3": "EACCES",
    }
    assert run_py(m2, "owner", 'report(try_read("/d/link3"))') == "SECRET"
