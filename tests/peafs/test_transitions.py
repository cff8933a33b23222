"""Exec transitions (docs/FORMAT.md section 8): a process of pea A that executes a program
named in A's exec table (path rule or directory rule) is in the target pea
from that exec on; A needs x on the program; the interpreter of a #! script
is checked under the target pea; there is no way back.

Programs print their pea from /proc/self/cgroup. Interpreters and libraries
of host programs (/bin/sh, /lib) are outside the mount; the programs under
test are in it, so their exec open reaches PeaFS.
"""

from __future__ import annotations

import shutil

import pytest

from helpers_peafs import run_snippet

POLICY = r'''
[pea.a.files]
"/" = "r"
"/bin/" = "rx"
"/ibin/" = "rx"
"/cgi/" = "rx"
"/noexec/" = "r"

[pea.a.exec]
"/bin/tob" = "b"
"/bin/tob-chain" = "b"
"/bin/tob-elf" = "b"
"/bin/script-bad-interp" = "b"
"/bin/script-good-interp" = "b"
"/cgi/" = "c"
"/noexec/tob" = "b"

[pea.b.files]
"/" = "r"
"/bin/" = "rx"
"/ibin/" = "r"

[pea.b.exec]
"/bin/toc" = "c"

[pea.c.files]
"/" = "r"
"/bin/" = "rx"
"/cgi/" = "rx"
'''

# The interpreter is on the mount: a transition commits when the kernel has
# loaded the program PeaFS opened last for the exec (the #! interpreter), so
# an interpreter the mount never sees (/bin/sh of the host) means no
# transition (execwatch.py). In a pod every program is on the mount.
SHOW_BODY = "sed -n 's|^0::.*/||p' /proc/self/cgroup\n"


@pytest.fixture(scope="module")
def m(peafs_module_mount, tmp_path_factory):
    root = tmp_path_factory.mktemp("transitions") / "root"
    for d in ("bin", "ibin", "cgi/sub", "noexec"):
        (root / d).mkdir(parents=True)
    mount = peafs_module_mount(POLICY, root=root)
    mp = mount.mountpoint
    SHOW = f"#!{mp}/bin/mysh\n" + SHOW_BODY
    progs = {
        "bin/tob": SHOW, "bin/plain": SHOW, "bin/toc": SHOW,
        "cgi/run": SHOW, "cgi/sub/deep": SHOW, "noexec/tob": SHOW,
        "bin/script-bad-interp": f"#!{mp}/ibin/mysh\nsed -n 's|^0::.*/||p' /proc/self/cgroup\n",
        "bin/script-good-interp": f"#!{mp}/bin/mysh\nsed -n 's|^0::.*/||p' /proc/self/cgroup\n",
        # moves a -> b, then, from b, executes b's own transition to c
        "bin/tob-chain": f"#!{mp}/bin/mysh\nsed -n 's|^0::.*/||p' /proc/self/cgroup\nexec {mp}/bin/toc\n",
    }
    for name, text in progs.items():
        (root / name).write_text(text)
        (root / name).chmod(0o755)
    for interp in ("ibin/mysh", "bin/mysh"):
        shutil.copy("/bin/dash", root / interp)
        (root / interp).chmod(0o755)
    shutil.copy("/usr/bin/cat", root / "bin/tob-elf")
    (root / "bin/tob-elf").chmod(0o755)
    return mount


def _run(m, pea, prog, *args):
    r = m.run([f"{m.mountpoint}/{prog}", *args], pea)
    return r.returncode, r.stdout.strip(), r.stderr.strip()


def test_path_rule_transition(m):
    assert _run(m, "a", "bin/tob")[:2] == (0, "b")


def test_directory_rule_transition_covers_everything_below(m):
    assert _run(m, "a", "cgi/run")[:2] == (0, "c")
    assert _run(m, "a", "cgi/sub/deep")[:2] == (0, "c")


def test_no_rule_no_transition(m):
    assert _run(m, "a", "bin/plain")[:2] == (0, "a")


def test_elf_binary_transition(m):
    # cat opens a file on the mount first: the pea moves at the commit, and
    # the first request of the new program settles it (a read of
    # /proc/self/cgroup alone involves no request of ours).
    (m.root / "bin/hello").write_text("hello\n") if not (m.root / "bin/hello").exists() else None
    code, out, err = _run(m, "a", "bin/tob-elf", f"{m.mountpoint}/bin/hello", "/proc/self/cgroup")
    assert code == 0, err
    assert out.splitlines()[0] == "hello"
    assert out.rsplit("/", 1)[1] == "b"


def test_transition_needs_x_and_stays_put_when_refused(m):
    got = run_snippet(m, "a", r'''
import subprocess
before = pea()
out = {"exec": E(subprocess.run, ["./noexec/tob"]), "before": before, "after": pea()}
''')
    assert got == {"exec": "EACCES", "before": "a", "after": "a"}


def test_script_interpreter_is_checked_under_the_target_pea(m):
    # a may execute /ibin/mysh, b may not: the script moves to b first.
    code, out, err = _run(m, "a", "bin/script-bad-interp")
    assert code != 0 and out == ""
    assert "Permission denied" in err or code == 126, (code, err)
    assert _run(m, "a", "bin/script-good-interp")[:2] == (0, "b")


def test_transitions_are_one_way_and_chain(m):
    # a -> b (tob); from b, a's table is gone: b's own table applies.
    code, out, err = _run(m, "a", "bin/tob-chain")
    assert code == 0, err
    assert out.split() == ["b", "c"]
    # b executing a's transition program stays b (no rule in b), and c has
    # no way back either.
    assert _run(m, "b", "bin/tob")[:2] == (0, "b")
    assert _run(m, "c", "bin/tob")[:2] == (0, "c")
    assert _run(m, "b", "cgi/run")[0] != 0     # b has no x on /cgi/


def test_transition_moves_the_whole_process_before_exec_returns(m):
    got = run_snippet(m, "a", r'''
import subprocess
p = subprocess.run(["./bin/tob"], capture_output=True, text=True)
out = {"child": p.stdout.strip(), "parent": pea()}
''')
    # The exec'ing child moved; its parent (another process) did not.
    assert got == {"child": "b", "parent": "a"}
