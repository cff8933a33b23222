"""Exec: refusals and transitions are decided for the process, not the thread.

- A pea without x on /bin/sh cannot run a shell (EACCES), neither directly nor
  as the interpreter of a script it may run.
- FUSE reports the *thread* id of the caller. When a thread other than the
  main one calls execve, the kernel makes that thread the process leader
  (its id becomes the process id) and kills the others. A refused exec from
  a thread leaves the process in its pea; a transition from a process with
  several threads is refused (the commit could not be attributed to one
  thread's exec: execwatch.py), and granted to the same program run by a
  single-threaded process.

These programs run without entering the pod root (the dynamic loader and libc
come from the host; the program itself is opened, for exec, through PeaFS).
"""

from __future__ import annotations

import shutil

from helpers_attack import policy, run_py

POLICY = policy('''
[pea.confined.files]
"/" = "r"
"/bin/script" = "rx"

[pea.shell.files]
"/" = "r"
"/bin/sh" = "rx"

[pea.a.files]
"/bin/" = "r"
"/bin/cat" = "rx"

[pea.a.exec]
"/bin/cat" = "b"

[pea.b.files]
"/bin/cat" = "rx"
"/secret_b" = "r"
''')


def _stage(root, mountpoint):
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/dash", root / "bin" / "sh")
    shutil.copy("/bin/cat", root / "bin" / "cat")
    shutil.copy("/bin/cat", root / "bin" / "refused")
    (root / "bin" / "script").write_text(f"#!{mountpoint}/bin/sh\nexit 3\n")
    for p in (root / "bin").iterdir():
        p.chmod(0o755)
    (root / "secret_b").write_text("B-ONLY")


def test_confined_pea_cannot_exec_a_shell(peafs_mount, tmp_path):
    root = tmp_path / "root"
    m = peafs_mount(POLICY, root=_mk(root))
    _stage(root, m.mountpoint)
    body = r'''
res = {
    "sh": attempt(os.execv, MNT + "/bin/sh", ["sh", "-c", "exit 7"]),
    # the script is rx, but its interpreter is opened for exec too
    "script": attempt(os.execv, MNT + "/bin/script", ["script"]),
}
report(res)
'''
    assert run_py(m, "confined", body, enter=False) == {"sh": "EACCES", "script": "EACCES"}
    # The same exec in a pea with x on /bin/sh runs the shell.
    proc = m.run([f"{m.mountpoint}/bin/sh", "-c", "exit 7"], "shell",
                 capture_output=True, text=True, timeout=60)
    assert proc.returncode == 7, proc.stderr


THREAD_EXEC = r'''
program = ARGS[0]
before = try_read(MNT + "/secret_b")
failure = []
def run():
    try:
        os.execv(MNT + program, [program, MNT + "/secret_b"])
    except OSError as e:
        failure.append(errno.errorcode[e.errno])
t = threading.Thread(target=run)
t.start()
t.join()
# Only reached when the exec failed.
report({"before": before, "exec": failure[0], "after": try_read(MNT + "/secret_b"),
        "own": attempt(read_file, MNT + "/bin/cat")})
'''


def test_transition_exec_from_a_multithreaded_process_is_refused(peafs_mount, tmp_path):
    # The kernel's commit event names the process, not the thread, and two
    # threads may be inside execve at once (the program is opened before
    # execs are serialised): a transition is granted to a single-threaded
    # process only. The exec fails and the process stays in its pea.
    root = tmp_path / "root"
    m = peafs_mount(POLICY, root=_mk(root))
    _stage(root, m.mountpoint)
    got = run_py(m, "a", THREAD_EXEC, "/bin/cat", enter=False)
    assert got == {"before": "EACCES", "exec": "EACCES", "after": "EACCES", "own": "OK"}
    assert any(e["operation"] == "exec" and e["path"] == "/bin/cat" and e["kind"] == "transition"
               and "several threads" in e["rule"] for e in m.audit())
    # The same program from a single-threaded process moves it to b.
    proc = m.run([f"{m.mountpoint}/bin/cat", f"{m.mountpoint}/secret_b"], "a")
    assert (proc.returncode, proc.stdout) == (0, "B-ONLY"), proc.stderr


def test_exec_refused_from_a_thread_leaves_the_process_in_its_pea(peafs_mount, tmp_path):
    root = tmp_path / "root"
    m = peafs_mount(POLICY, root=_mk(root))
    _stage(root, m.mountpoint)
    got = run_py(m, "a", THREAD_EXEC, "/bin/refused", enter=False)
    assert got == {"before": "EACCES", "exec": "EACCES", "after": "EACCES", "own": "OK"}


def _mk(root):
    root.mkdir(parents=True, exist_ok=True)
    return root
