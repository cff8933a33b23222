"""Exec transitions in a real pod (`pod start` / `pod exec --pea`).

SECURITY.md, "Exec transitions": a transition takes effect only when the exec commits. Since
Linux 6.8 the kernel opens the program (the exec open PeaFS sees) before it
copies argv, so an execve with a bad argv pointer opens the program and then
fails with EFAULT: the process must still be in its pea, without the target
pea's rights. The attacker is a static C program (no loader needed) in the
pod's staging root; pea ``a`` may run /tbin/tcat (a copy of cat), which moves
it to ``t``; only ``t`` may read /data/t-only.

The attacker prints one JSON line after its failed exec: ``exec`` (errno
name), ``pea`` (last component of /proc/self/cgroup's "0::" line) and
``t_only`` ("OK" or the errno name of open("/data/t-only", O_RDONLY)).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from pod_support import end_supervisor, sleeper_with_pid

PEAS = r'''
[pea.main.files]
"/" = "rwx"

[pea.a.files]
"/" = "r"
"/usr/" = "rx"
"/tbin/" = "rx"
"/data" = "rw"
"/data/" = "rw"
"/data/t-only" = ""

[pea.a.exec]
"/tbin/tcat" = "t"
"/tbin/tshow" = "t"

[pea.t.files]
"/" = "r"
"/usr/" = "rx"
"/tbin/" = "rx"
"/data/t-only" = "r"
'''

SECRET = "secret-t"

ATTACK_C = r'''
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/time.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *ename(int e) {
    const char *n = strerrorname_np(e);
    return n ? n : "UNKNOWN";
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: attack badargv|good|sigio|sigio-other|pdeath|alarm|itimer PROG T_ONLY\n");
        return 2;
    }
    int pipefd[2];
    if (!strcmp(argv[1], "sigio") || !strcmp(argv[1], "sigio-other")) {
        /* SIGTERM (fatal by default) to this process whenever the pipe
           becomes readable: armed in pea a, to be fired (by a process left
           in a) after a transition. (F_SETSIG of SIGKILL itself is refused
           by the filter: pods/seccomp.py.) */
        if (pipe(pipefd) != 0) return 3;
        if (fcntl(pipefd[0], F_SETSIG, SIGTERM) != 0) return 3;
        if (fcntl(pipefd[0], F_SETFL, O_ASYNC) != 0) return 3;
        if (!strcmp(argv[1], "sigio")) {
            if (fcntl(pipefd[0], F_SETOWN, getpid()) != 0) return 4;
        } else {   /* another process of the pea names us as the owner */
            pid_t me = getpid(), c = fork();
            if (c == 0) _exit(fcntl(pipefd[0], F_SETOWN, me) == 0 ? 0 : 4);
            int st;
            waitpid(c, &st, 0);
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) return 4;
        }
    }
    if (!strcmp(argv[1], "pdeath") && prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) return 5;
    if (!strcmp(argv[1], "alarm")) alarm(100);   /* SIGALRM (fatal by default) later */
    if (!strcmp(argv[1], "itimer")) {
        struct itimerval v = { { 0, 0 }, { 100, 0 } };
        if (setitimer(ITIMER_VIRTUAL, &v, NULL) != 0) return 6;
    }
    const char *prog = argv[2], *tonly = argv[3];
    char *good_argv[] = { "tcat", (char *)tonly, NULL };
    char *empty_env[] = { NULL };
    long r;
    if (!strcmp(argv[1], "badargv"))
        r = syscall(SYS_execve, prog, (char *const *)1, NULL);
    else if (!strcmp(argv[1], "good") || !strcmp(argv[1], "sigio")
             || !strcmp(argv[1], "sigio-other") || !strcmp(argv[1], "pdeath")
             || !strcmp(argv[1], "alarm") || !strcmp(argv[1], "itimer"))
        r = syscall(SYS_execve, prog, good_argv, empty_env);
    else
        return 2;
    const char *exec_err = r == 0 ? "OK" : ename(errno);

    char line[4096], pea[256] = "?";
    FILE *f = fopen("/proc/self/cgroup", "re");
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, "0::", 3) == 0) {
            line[strcspn(line, "\n")] = 0;
            char *slash = strrchr(line, '/');
            snprintf(pea, sizeof pea, "%s", slash ? slash + 1 : line + 3);
        }
    }
    if (f) fclose(f);
    const char *t = "OK";
    int fd = open(tonly, O_RDONLY | O_CLOEXEC);
    if (fd < 0) t = ename(errno); else close(fd);
    printf("{\"exec\": \"%s\", \"pea\": \"%s\", \"t_only\": \"%s\"}\n", exec_err, pea, t);
    return 0;
}
'''


@pytest.fixture(scope="module")
def pod(pods, tmp_path_factory):
    p = pods.start(peas=PEAS)
    root = p.root
    (root / "tbin").mkdir(mode=0o755)
    (root / "data").mkdir(mode=0o755)
    src = tmp_path_factory.mktemp("pod-attack") / "attack.c"
    src.write_text(ATTACK_C)
    cc = subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", str(root / "tbin/attack"),
                         str(src)], capture_output=True, text=True, timeout=120)
    assert cc.returncode == 0, f"gcc -static: {cc.stderr}"
    shutil.copy("/usr/bin/cat", root / "tbin/tcat")
    (root / "tbin/tshow").write_text("#!/bin/sh\nsed -n 's|^0::.*/||p' /proc/self/cgroup\n")
    for name in ("attack", "tcat", "tshow"):
        (root / "tbin" / name).chmod(0o755)
    (root / "data/t-only").write_text(SECRET + "\n")
    (root / "data/t-only").chmod(0o644)
    return p


def _why(r) -> str:
    return f"rc={r.returncode} stdout={r.stdout[-1500:]!r} stderr={r.stderr[-1500:]!r}"


def test_bad_argv_exec_leaves_a_pod_process_in_its_pea(pod):
    # The rules as set up: a cannot read t-only itself.
    r = pod.exec("/bin/cat", "/data/t-only", pea="a")
    assert r.returncode == 1 and r.stdout == "" and "Permission denied" in r.stderr, _why(r)
    r = pod.exec("/tbin/attack", "badargv", "/tbin/tcat", "/data/t-only", pea="a")
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    assert r.returncode == 0 and lines, _why(r)
    assert json.loads(lines[-1]) == {"exec": "EFAULT", "pea": "a", "t_only": "EACCES"}, _why(r)


def test_committed_transition_in_a_pod(pod):
    r = pod.exec("/tbin/tcat", "/data/t-only", pea="a")
    assert (r.returncode, r.stdout) == (0, SECRET + "\n"), _why(r)
    # through an execve of the attacker with a good argv
    r = pod.exec("/tbin/attack", "good", "/tbin/tcat", "/data/t-only", pea="a")
    assert (r.returncode, r.stdout) == (0, SECRET + "\n"), _why(r)
    r = pod.exec("/tbin/tshow", pea="a")
    assert (r.returncode, r.stdout.strip()) == (0, "t"), _why(r)


@pytest.mark.parametrize("mode", ["sigio", "sigio-other", "pdeath", "alarm", "itimer"])
def test_a_signal_armed_before_a_transition_never_crosses_it(pod, mode):
    # F_SETOWN(+F_SETSIG, O_ASYNC) naming the process, by itself or by
    # another process of its pea, PR_SET_PDEATHSIG, or an interval timer
    # (alarm, setitimer): the kernel keeps them
    # across an exec, so after a transition pea a could signal the t program
    # when it likes. Such a process may not change pea (the supervisor noted
    # the arming): the exec is refused, the process stays in a, unread.
    r = pod.exec("/tbin/attack", mode, "/tbin/tcat", "/data/t-only", pea="a")
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    assert SECRET not in r.stdout, _why(r)
    assert r.returncode == 0 and lines, _why(r)
    assert json.loads(lines[-1]) == {"exec": "EACCES", "pea": "a", "t_only": "EACCES"}, _why(r)
    audit = [json.loads(x) for x in (pod.root.parent / (pod.root.name + ".peapod") / "audit.log")
             .read_text().splitlines() if x.strip()]
    assert any(e["operation"] == "exec" and e["path"] == "/tbin/tcat" and "armed" in e["rule"]
               or "SIGIO owner" in e["rule"] for e in audit), audit[-3:]


def test_an_armed_mark_follows_the_process_not_its_reused_pid():
    # The supervisor keys its notes by host pid, each pinned by a pidfd. A
    # process that armed a signal and died leaves a note whose pidfd is dead;
    # when its pid comes back as another process that arms a signal too,
    # that process must be noted, not taken for the dead one (whose stale
    # note no longer counts): else it could change pea with its timer armed.
    from pods.supervisor import Supervisor
    sup = Supervisor("t-armed-reuse", None)
    first = subprocess.Popen(["sleep", "30"])
    pid = first.pid
    second = None
    try:
        assert sup._arm_host(pid)
        assert "armed" in sup.transition_guard(pid)
        first.kill()
        first.wait()
        assert "armed" not in (sup.transition_guard(pid) or "")   # the dead one's note is void
        second = sleeper_with_pid(pid)
        assert sup._arm_host(pid)                      # the new process arms a timer
        assert "armed" in (sup.transition_guard(pid) or ""), "the reused pid's note was lost"
    finally:
        end_supervisor(sup, first, second)
