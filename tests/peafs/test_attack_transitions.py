"""Attacks on exec transitions: a failed exec must leave the process in its pea.

SECURITY.md, "Exec transitions": a transition takes effect only when the exec commits (the
kernel's point of no return). Since Linux 6.8 the kernel opens the program
(the FUSE open with flag 0o40 that PeaFS sees) *before* it copies argv and
envp, and many checks come after that open: a bad argv/envp pointer
(EFAULT), argument size (E2BIG), the #! interpreter or the ELF loader
(EACCES, ENOENT), an unknown format (ENOEXEC). A PeaFS that moves the caller
at the open leaves a process whose exec failed in the target pea, with the
caller's own code (and its sibling threads) running under the target's
rights. Here pea ``a`` may execute /bin/tcat & co., which move it to ``t``;
only ``t`` may read /data/t-only.

The attack program is C (compiled here, into a 0755 directory under /tmp,
outside the mount: its own exec is not a transition). After its attempt it
prints one JSON line: ``exec`` (errno name of the failed exec), ``pea`` (the
last component of /proc/self/cgroup's "0::" line), ``t_only`` ("OK" or the
errno name of open(t-only, O_RDONLY)) and ``pid``. A sibling thread that
opens t-only writes THREAD-READ to stdout at once (so it shows even when an
exec succeeds and the process memory is gone).

Other attacks: a multi-threaded process may not transition at all (the
commit could not be attributed to one thread); a transitioned program whose
environment holds a variable glibc drops for set-id programs (LD_PRELOAD,
LD_AUDIT, LD_LIBRARY_PATH) is killed, so pea ``a`` cannot inject code into a
``t`` program; and a pea may hard-link only a file it has a letter on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

POLICY = r'''
[pea.a.files]
"/" = "r"
"/bin/" = "rx"
"/ibin/" = "rx"
"/data" = "rw"
"/data/" = "rw"
"/data/t-only" = ""

[pea.a.exec]
"/bin/tcat" = "t"
"/bin/tscript-badinterp" = "t"
"/bin/tscript" = "t"
"/bin/tscript-hostsh" = "t"
"/bin/tbadelf" = "t"
"/bin/tgarbage" = "t"
"/bin/tshow" = "t"

[pea.t.files]
"/" = "r"
"/bin/" = "rx"
"/ibin/" = "r"
"/data/t-only" = "r"
'''

SECRET = "secret-t"
SHOW_BODY = "sed -n 's|^0::.*/||p' /proc/self/cgroup\n"
# 64 bytes that no binfmt handler takes: no "#!", no ELF magic.
GARBAGE = bytes(range(0x80, 0xC0))
assert len(GARBAGE) == 64

ATTACK_C = r'''
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef AT_EMPTY_PATH
#define AT_EMPTY_PATH 0x1000
#endif

static const char *PROG, *TONLY;
static char *const EMPTY_ENV[] = { NULL };

static const char *ename(int e) {
    const char *n = strerrorname_np(e);
    return n ? n : "UNKNOWN";
}

static void pea(char *out, size_t n) {
    char buf[4096];
    snprintf(out, n, "?");
    FILE *f = fopen("/proc/self/cgroup", "re");
    if (!f) return;
    while (fgets(buf, sizeof buf, f)) {
        if (strncmp(buf, "0::", 3) == 0) {
            buf[strcspn(buf, "\n")] = 0;
            char *slash = strrchr(buf, '/');
            snprintf(out, n, "%s", slash ? slash + 1 : buf + 3);
        }
    }
    fclose(f);
}

static const char *open_tonly(void) {
    int fd = open(TONLY, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ename(errno);
    close(fd);
    return "OK";
}

/* The JSON line. Read the pea before trying t-only. */
static void report(const char *exec_err, const char *extra) {
    char p[256];
    pea(p, sizeof p);
    const char *t = open_tonly();
    printf("{\"exec\": \"%s\", \"pea\": \"%s\", \"t_only\": \"%s\", \"pid\": %d%s}\n",
           exec_err, p, t, (int)getpid(), extra ? extra : "");
    fflush(stdout);
}

static long do_execve(const char *path, char *const *argv, char *const *envp) {
    return syscall(SYS_execve, path, argv, envp);
}

/* -- sibling threads hammering open(t-only) ------------------------------- */

#define NTHREADS 4
static atomic_int stop_flag, ready, thread_ok;
static atomic_long tries_total;

static double since(const struct timespec *t0) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t0->tv_sec) + (t.tv_nsec - t0->tv_nsec) / 1e9;
}

static void *hammer(void *arg) {
    (void)arg;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long n = 0;
    atomic_fetch_add(&ready, 1);
    while (!atomic_load(&stop_flag) && n < 200000 && since(&t0) < 3.0) {
        int fd = open(TONLY, O_RDONLY | O_CLOEXEC);
        n++;
        if (fd >= 0) {
            atomic_fetch_add(&thread_ok, 1);
            (void)!write(1, "THREAD-READ\n", 12);
            close(fd);
        }
    }
    atomic_fetch_add(&tries_total, n);
    return NULL;
}

static pthread_t threads[NTHREADS];

static void start_threads(void) {
    for (int i = 0; i < NTHREADS; i++)
        if (pthread_create(&threads[i], NULL, hammer, NULL) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            exit(2);
        }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (atomic_load(&ready) < NTHREADS && since(&t0) < 5.0)
        usleep(1000);
}

static void stop_threads(void) {
    atomic_store(&stop_flag, 1);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(threads[i], NULL);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: attack MODE PROG T_ONLY [ARG]\n");
        return 2;
    }
    const char *mode = argv[1];
    PROG = argv[2];
    TONLY = argv[3];
    char *good_argv[] = { "tcat", (char *)TONLY, NULL };
    char *name_argv[] = { (char *)PROG, NULL };
    long r = 0;

    if (!strcmp(mode, "badargv")) {
        r = do_execve(PROG, (char *const *)1, NULL);
    } else if (!strcmp(mode, "badenv")) {
        r = do_execve(PROG, good_argv, (char *const *)1);
    } else if (!strcmp(mode, "e2big")) {
        /* 80 pointers to one 100 KiB string: 8 MB of arguments, above the
           kernel's cap (3/4 of _STK_LIM = 6 MiB) whatever RLIMIT_STACK is;
           each string is below MAX_ARG_STRLEN (128 KiB). */
        enum { N = 80, LEN = 100 * 1024 };
        char *s = malloc(LEN + 1);
        char **av = calloc(N + 1, sizeof *av);
        if (!s || !av) return 2;
        memset(s, 'A', LEN);
        s[LEN] = 0;
        for (int i = 0; i < N; i++) av[i] = s;
        r = do_execve(PROG, av, EMPTY_ENV);
    } else if (!strcmp(mode, "plain")) {
        /* execve(PROG, [PROG], {}) : interpreter / loader / format failures */
        r = do_execve(PROG, name_argv, EMPTY_ENV);
    } else if (!strcmp(mode, "execveat-bad") || !strcmp(mode, "execveat-good")) {
        int fd = open(PROG, O_PATH);
        if (fd < 0) {
            printf("{\"exec\": \"open-O_PATH-%s\"}\n", ename(errno));
            return 3;
        }
        char *const *av = !strcmp(mode, "execveat-bad") ? (char *const *)1 : good_argv;
        r = syscall(SYS_execveat, fd, "", av, EMPTY_ENV, AT_EMPTY_PATH);
    } else if (!strcmp(mode, "good")) {
        r = do_execve(PROG, good_argv, EMPTY_ENV);
    } else if (!strcmp(mode, "threads-fail")) {
        int n = argc > 4 ? atoi(argv[4]) : 300;
        int first = 0, mixed = 0, succeeded = 0;
        start_threads();
        for (int i = 0; i < n; i++) {
            r = do_execve(PROG, (char *const *)1, NULL);
            if (r == 0) { succeeded++; continue; }
            int e = errno;
            if (i == 0) first = e;
            else if (e != first) mixed++;
        }
        stop_threads();
        char extra[512];
        snprintf(extra, sizeof extra,
                 ", \"execs\": %d, \"mixed\": %d, \"succeeded\": %d, \"ready\": %d,"
                 " \"thread_ok\": %d, \"tries\": %ld",
                 n, mixed, succeeded, atomic_load(&ready), atomic_load(&thread_ok),
                 atomic_load(&tries_total));
        report(first ? ename(first) : "OK", extra);
        return 0;
    } else if (!strcmp(mode, "threads-good")) {
        start_threads();
        r = do_execve(PROG, good_argv, EMPTY_ENV);
        int e = errno;
        stop_threads();
        char extra[512];
        snprintf(extra, sizeof extra, ", \"ready\": %d, \"thread_ok\": %d, \"tries\": %ld",
                 atomic_load(&ready), atomic_load(&thread_ok), atomic_load(&tries_total));
        report(ename(e), extra);
        return 0;
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    /* Only reached when the exec failed. */
    report(r == 0 ? "OK" : ename(errno), NULL);
    return 0;
}
'''

BADELF_C = "int main(void) { return 0; }\n"

# A constructor that opens t-only and, on success, says so. la_version makes
# it a valid LD_AUDIT module as well.
EVIL_C = r'''
#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void evil(void) {
    int fd = open(SECRET_PATH, O_RDONLY);
    if (fd >= 0) {
        (void)!write(1, "PWNED\n", 6);
        close(fd);
    }
}
unsigned int la_version(unsigned int v) { return v; }
'''

# For LD_LIBRARY_PATH: the evil object is named libc.so.6 (what tcat needs)
# and itself needs the real libc by absolute path, so tcat still runs. It is
# linked against a stub without soname whose name (a placeholder of the same
# length) becomes its DT_NEEDED string; the string is then patched.
STUB_C = r'''
int open(const char *p, int f, ...) { return -1; }
long write(int fd, const void *b, unsigned long n) { return -1; }
int close(int fd) { return 0; }
'''


def _cc(args, cwd=None):
    r = subprocess.run(["gcc", "-O2", "-Wall", *map(str, args)], capture_output=True,
                       text=True, timeout=120, cwd=cwd)
    assert r.returncode == 0, f"gcc {args}: {r.stderr}"


def _real_libc() -> str:
    out = subprocess.run(["ldd", "/usr/bin/cat"], capture_output=True, text=True,
                         timeout=30).stdout
    for line in out.splitlines():
        if line.strip().startswith("libc.so.6 =>"):
            return line.split("=>")[1].split()[0]
    raise AssertionError(f"no libc.so.6 in ldd /usr/bin/cat: {out}")


def _build_ldpath_libc(workdir: Path, dest: Path, secret_path: str) -> None:
    real = _real_libc()
    placeholder = "./" + "Q" * (len(real) - 5) + ".so"
    assert len(placeholder) == len(real)
    (workdir / "stub.c").write_text(STUB_C)
    (workdir / "evil.c").write_text(EVIL_C)
    _cc(["-shared", "-fPIC", "-nostdlib", "-o", placeholder, "stub.c"], cwd=workdir)
    _cc(["-shared", "-fPIC", "-nostdlib", f"-DSECRET_PATH={json.dumps(secret_path)}",
         "-o", "libc.so.6", "evil.c", placeholder], cwd=workdir)
    blob = (workdir / "libc.so.6").read_bytes()
    old = placeholder.encode() + b"\0"
    assert blob.count(old) == 1, "DT_NEEDED placeholder not found exactly once"
    dest.write_bytes(blob.replace(old, real.encode() + b"\0"))
    dest.chmod(0o755)


@pytest.fixture(scope="module")
def bindir():
    """A 0755 directory under /tmp (pod users must reach it) for the attacker."""
    d = Path(tempfile.mkdtemp(prefix="peafs-attack-bin-", dir="/tmp"))
    try:
        d.chmod(0o755)
        (d / "attack.c").write_text(ATTACK_C)
        _cc(["-pthread", "-o", d / "attack", d / "attack.c"])
        (d / "attack").chmod(0o755)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def m(peafs_module_mount, tmp_path_factory):
    base = tmp_path_factory.mktemp("attack-transitions")
    root = base / "root"
    for d in ("bin", "ibin", "data", "data/evillib"):
        (root / d).mkdir(parents=True)
    mount = peafs_module_mount(POLICY, root=root)
    mp = mount.mountpoint
    shutil.copy("/usr/bin/cat", root / "bin/tcat")
    shutil.copy("/bin/dash", root / "ibin/sh")
    (root / "bin/tscript-badinterp").write_text(f"#!{mp}/ibin/sh\necho ran\n")
    # Interpreters on the mount (t has rx on /bin/): a transition commits
    # when the kernel has loaded the file PeaFS opened last for the exec.
    # tscript-hostsh's interpreter is the host's /bin/sh, which the mount
    # never sees: no transition (in a pod every program is on the mount).
    (root / "bin/tscript").write_text(f"#!{mp}/bin/tsh\ncat {mp}/data/t-only\n")
    (root / "bin/tscript-hostsh").write_text(f"#!/bin/sh\ncat {mp}/data/t-only\n")
    shutil.copy("/bin/dash", root / "bin/tsh")
    (root / "bin/tshow").write_text(f"#!{mp}/bin/tsh\n" + SHOW_BODY)
    (base / "badelf.c").write_text(BADELF_C)
    _cc(["-o", root / "bin/tbadelf", base / "badelf.c",
         "-Wl,--dynamic-linker=/nonexistent/ld.so"])
    (root / "bin/tgarbage").write_bytes(GARBAGE)
    for p in (root / "bin").iterdir():
        p.chmod(0o755)
    (root / "ibin/sh").chmod(0o755)
    (root / "data/t-only").write_text(SECRET + "\n")
    (root / "data/a-ok").write_text("a-ok\n")
    (root / "data/evil.c").write_text(EVIL_C)
    _cc(["-shared", "-fPIC", f"-DSECRET_PATH={json.dumps(f'{mp}/data/t-only')}",
         "-o", root / "data/evil.so", root / "data/evil.c"])
    (root / "data/evil.so").chmod(0o755)
    work = base / "ldpath"
    work.mkdir()
    _build_ldpath_libc(work, root / "data/evillib/libc.so.6", f"{mp}/data/t-only")
    for p in (root / "data").rglob("*"):
        if p.is_file():
            p.chmod(p.stat().st_mode | 0o444)
    return mount


def _p(m, rel: str) -> str:
    return f"{m.mountpoint}/{rel}"


def attack(m, bindir, mode, prog, *extra, pea="a"):
    """Run the attacker in ``pea``; returns (CompletedProcess, JSON or None)."""
    r = m.run([str(bindir / "attack"), mode, _p(m, prog), _p(m, "data/t-only"),
               *map(str, extra)], pea)
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    return r, (json.loads(lines[-1]) if lines else None)


def _why(r) -> str:
    return f"rc={r.returncode} stdout={r.stdout[-1500:]!r} stderr={r.stderr[-1500:]!r}"


def _expect_failed_exec(m, bindir, mode, prog, errname):
    r, got = attack(m, bindir, mode, prog)
    assert got is not None, f"the exec did not fail (no report): {_why(r)}"
    assert SECRET not in r.stdout, _why(r)
    assert {k: got[k] for k in ("exec", "pea", "t_only")} == \
        {"exec": errname, "pea": "a", "t_only": "EACCES"}, _why(r)


# -- sanity: the rules as set up ---------------------------------------------


def test_pea_a_cannot_read_t_only_directly(m):
    r = m.run(["/bin/cat", _p(m, "data/t-only")], "a")
    assert r.returncode == 1 and r.stdout == "", _why(r)
    assert "Permission denied" in r.stderr
    r = m.run(["/bin/cat", _p(m, "data/t-only")], "t")
    assert (r.returncode, r.stdout) == (0, SECRET + "\n"), _why(r)


# -- failed execs: the process stays in its pea ------------------------------


def test_bad_argv_pointer_leaves_the_process_in_its_pea(m, bindir):
    _expect_failed_exec(m, bindir, "badargv", "bin/tcat", "EFAULT")


def test_bad_envp_pointer_leaves_the_process_in_its_pea(m, bindir):
    _expect_failed_exec(m, bindir, "badenv", "bin/tcat", "EFAULT")


def test_e2big_leaves_the_process_in_its_pea(m, bindir):
    _expect_failed_exec(m, bindir, "e2big", "bin/tcat", "E2BIG")


def test_refused_interpreter_leaves_the_process_in_its_pea(m, bindir):
    # t has no x on /ibin: the script's interpreter is refused (checked under
    # the target pea), so the exec fails with EACCES.
    _expect_failed_exec(m, bindir, "plain", "bin/tscript-badinterp", "EACCES")


def test_missing_elf_loader_leaves_the_process_in_its_pea(m, bindir):
    _expect_failed_exec(m, bindir, "plain", "bin/tbadelf", "ENOENT")


def test_enoexec_leaves_the_process_in_its_pea(m, bindir):
    _expect_failed_exec(m, bindir, "plain", "bin/tgarbage", "ENOEXEC")


def test_execveat_bad_argv_leaves_the_process_in_its_pea(m, bindir):
    _expect_failed_exec(m, bindir, "execveat-bad", "bin/tcat", "EFAULT")


# -- positive controls: transitions that commit still work -------------------


def test_execveat_good_argv_transitions(m, bindir):
    r, got = attack(m, bindir, "execveat-good", "bin/tcat")
    assert got is None and (r.returncode, r.stdout) == (0, SECRET + "\n"), _why(r)


def test_good_exec_transitions(m, bindir):
    r, got = attack(m, bindir, "good", "bin/tcat")
    assert got is None and (r.returncode, r.stdout) == (0, SECRET + "\n"), _why(r)
    r = m.run([_p(m, "bin/tcat"), _p(m, "data/t-only")], "a")
    assert (r.returncode, r.stdout) == (0, SECRET + "\n"), _why(r)


def test_transitioned_program_runs_in_the_target_pea(m):
    r = m.run([_p(m, "bin/tshow")], "a")
    assert (r.returncode, r.stdout.strip()) == (0, "t"), _why(r)


def test_good_script_transition_reads_the_secret(m):
    r = m.run([_p(m, "bin/tscript")], "a")
    assert (r.returncode, r.stdout) == (0, SECRET + "\n"), _why(r)


def test_script_whose_interpreter_is_off_the_mount_does_not_transition(m):
    before = len(m.audit())
    r = m.run([_p(m, "bin/tscript-hostsh")], "a")
    assert r.returncode == 1 and SECRET not in r.stdout, _why(r)
    assert "Permission denied" in r.stderr, _why(r)
    new = m.audit()[before:]
    assert any(e["operation"] == "exec" and e["path"] == "/bin/tscript-hostsh"
               and e["kind"] == "transition" and "no transition" in e["rule"] for e in new), new


# -- sibling threads ----------------------------------------------------------


def test_failing_execs_never_give_sibling_threads_the_target_rights(m, bindir):
    r, got = attack(m, bindir, "threads-fail", "bin/tcat", 300)
    assert got is not None, _why(r)
    assert "THREAD-READ" not in r.stdout, \
        f"{r.stdout.count('THREAD-READ')} sibling-thread opens of t-only succeeded: {got}"
    assert got["ready"] == 4 and got["tries"] > 0, got
    assert (got["execs"], got["succeeded"], got["mixed"], got["thread_ok"]) == (300, 0, 0, 0), got
    assert (got["pea"], got["t_only"]) == ("a", "EACCES"), got
    # Every exec fails the same way. The kernel opens the program before it
    # reads argv, so if PeaFS refuses the open because the process has other
    # threads (the rule test_exec_with_sibling_threads_is_refused checks),
    # the exec fails EACCES (and is audited as a refused exec) before argv is
    # ever read; otherwise it gets as far as argv and fails EFAULT.
    if got["exec"] == "EACCES":
        refused = [e for e in m.audit() if e.get("pid") == got["pid"]
                   and e.get("operation") == "exec" and e.get("path") == "/bin/tcat"
                   and e.get("pea") == "a"]
        assert refused, "EACCES without an audited refusal of the exec"
    else:
        assert got["exec"] == "EFAULT", got


def test_exec_with_sibling_threads_is_refused(m, bindir):
    r, got = attack(m, bindir, "threads-good", "bin/tcat")
    assert SECRET not in r.stdout, f"the multi-threaded exec transitioned: {_why(r)}"
    assert "THREAD-READ" not in r.stdout, \
        f"{r.stdout.count('THREAD-READ')} sibling-thread opens of t-only succeeded: {got}"
    assert got is not None, _why(r)
    assert got["ready"] == 4 and got["thread_ok"] == 0, got
    assert {k: got[k] for k in ("exec", "pea", "t_only")} == \
        {"exec": "EACCES", "pea": "a", "t_only": "EACCES"}, got
    refused = [e for e in m.audit() if e.get("pid") == got["pid"]
               and e.get("operation") == "exec" and e.get("path") == "/bin/tcat"
               and e.get("pea") == "a"]
    assert refused, f"no audit line for the refused exec: {m.audit()[-5:]}"


# -- loader variables: no code of pea a inside a t program --------------------


@pytest.mark.parametrize("var,value", [
    ("LD_PRELOAD", "data/evil.so"),
    ("LD_AUDIT", "data/evil.so"),
    ("LD_LIBRARY_PATH", "data/evillib"),
])
def test_loader_variables_kill_the_transitioned_program(m, var, value):
    before = len(m.audit())
    r = m.run(["/usr/bin/env", f"{var}={_p(m, value)}", _p(m, "bin/tcat"),
               _p(m, "data/a-ok")], "a")
    assert "PWNED" not in r.stdout, f"{var} ran pea a's code in pea t: {_why(r)}"
    assert r.returncode == 128 + 9, f"not killed by SIGKILL: {_why(r)}"
    assert r.stdout == "", _why(r)
    new = m.audit()[before:]
    assert any(e.get("operation") == "exec" and var in (e.get("rule") or "") for e in new), \
        f"no exec audit line naming {var}: {new}"


def test_loader_variable_attack_control_without_transition(m):
    # The same preload with a program that is no transition runs (in a, where
    # the constructor's open of t-only is refused): the kill is for
    # transitions only, and evil.so itself loads.
    r = m.run(["/usr/bin/env", f"LD_PRELOAD={_p(m, 'data/evil.so')}", "/bin/cat",
               _p(m, "data/a-ok")], "a")
    assert (r.returncode, r.stdout) == (0, "a-ok\n"), _why(r)


# -- hard links ----------------------------------------------------------------


def test_hard_link_needs_a_letter_on_the_original(m):
    code = r'''
import os, sys, errno
def E(fn, *a):
    try:
        fn(*a)
        return "OK"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
mp = sys.argv[1]
print(E(os.link, mp + "/data/t-only", mp + "/data/lnk"),
      E(os.link, mp + "/data/a-ok", mp + "/data/lnk2"),
      E(lambda: open(mp + "/data/lnk2").read()))
'''
    r = m.py(code, "a", 0, m.mountpoint)
    assert r.returncode == 0, _why(r)
    assert r.stdout.split() == ["EACCES", "OK", "OK"], _why(r)
    r = m.run(["/bin/cat", _p(m, "data/lnk")], "a")
    assert r.returncode != 0 and SECRET not in r.stdout, _why(r)
