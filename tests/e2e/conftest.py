"""Helpers for whole-pod tests of the examples (root, /dev/fuse; they never skip).

Generic, shared by the example tests (mail, web):

- ``copy_policy(src, dst, name=, root=, address=, id_base=)``: a copy of an
  example policy with another pod name, root, [pod.net] address and host id
  range (the rest, peas included, is the example's own, byte for byte);
- ``free_address(first=100, last=199)``: "10.88.N.2/24" with a random N in
  first-last such that no interface holds an address in 10.88.N.0/24 (its
  host side 10.88.N.1 included); these two are examples/mail/examplelib.py's,
  which the app benchmarks (bench/apps_*.py) use as well;
- ``PodRun(base)``: a private $PEAPOD_RUN; ``.env()``, ``.pod(*args)`` runs
  the ``pod`` command with it, ``.run(cmd)`` any command with it;
- ``build_root(run, setup, policy, root, hosts_line)`` and ``start_pod(run,
  setup, policy, name, address, port, timeout=)``: an example's setup with
  --no-start (the root is built) and again (the root is kept, the pod is
  running and answers on address:port);
- ``compile_probe(dir, create_mode=, exec_script=)``: the attacker's payload
  (``PAYLOAD_C``, a small C program: each pair of arguments an operation and
  a path, one line "OP PATH OK|ERRNONAME" each, after a first line with its
  cgroup) compiled with gcc; ``plant(binary, root, pod_path, mode)`` copies
  it into the pod's root;
- ``pea_exec(run, name, pea, *cmd, user=)``: `pod exec NAME --pea PEA`;
  ``run_payload(run, name, pea, path, refused, allowed, user=)``: the payload
  at ``path`` run with the dynamic loader in ``pea`` (so it stays there),
  asserting it is in the pea and each (op, path) is refused with EACCES or
  allowed; ``results_of(stdout)`` and ``assert_outcomes(...)`` are its parts;
  ``assert_exec_refused(run, name, pea, *cmd, output=)``: executing ``cmd``
  in ``pea`` is refused (126, "Permission denied", ``output`` not printed);
- ``Audit(root)``: the pod's audit log (ROOT.peapod/audit.log) from now on,
  ``.entries()``; ``assert_audited(entries, name, pea, refused, uid)``: each
  refusal has its audit line (``audit_entry_for``, ``same_file``);
- ``leftovers(run, name, root)``: what a stopped pod left behind (an entry in
  ``pod list``, a mount under its root or run dir, processes, cgroups, a
  veth, its runtime dir), as a list of words; empty when clean;
- ``forced_cleanup(run, name)``: remove whatever is left (after a failure);
- ``safe_rmtree(path)``: rmtree, refused while anything is mounted below;
- ``teardown(run, name, root, stop_timeout)``: `pod stop`, what was left,
  forced cleanup, the root and ROOT.peapod removed, in every case; returns
  (the stop's result or None, what was left) for ``assert_clean``.

Tests get them through the ``e2e`` fixture (``e2e.copy_policy(...)``), so
they never import this file by name (each test directory has a conftest).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from kernel import cgroup
from pods import limits, netns, runtime

REPO = Path(__file__).resolve().parents[2]
POD = [str(Path(sys.prefix) / "bin" / "pod")]   # as `make deps` builds it (pods/pod_front.c)
LOADER = "/lib64/ld-linux-x86-64.so.2"


def _examplelib():
    """examples/mail/examplelib.py, loaded from its file (the examples are no
    package, and this keeps sys.path as it is)."""
    path = REPO / "examples" / "mail" / "examplelib.py"
    spec = importlib.util.spec_from_file_location("examplelib", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ex = _examplelib()
copy_policy = ex.copy_policy


def free_address(first: int = 100, last: int = 199) -> str:
    return ex.free_address(first, last)


class PodRun:
    """A private $PEAPOD_RUN and the commands that use it."""

    def __init__(self, base: Path):
        self.dir = base / "run"
        self.dir.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict:
        return dict(ex.pod_env(), PEAPOD_RUN=str(self.dir))

    def run(self, cmd, *, timeout=60, input=None) -> subprocess.CompletedProcess:
        return subprocess.run([str(c) for c in cmd], env=self.env(), cwd=REPO, text=True,
                              capture_output=True, timeout=timeout, input=input,
                              stdin=subprocess.DEVNULL if input is None else None)

    def pod(self, *args, timeout=60, input=None) -> subprocess.CompletedProcess:
        return self.run(POD + list(args), timeout=timeout, input=input)

    def listed(self) -> list[dict]:
        r = self.pod("list", "--json", timeout=30)
        assert r.returncode == 0, f"pod list: {r.stderr}"
        return json.loads(r.stdout or "[]")


# ------------------------------------------------------------------ setup

def build_root(run: PodRun, setup: Path, policy: Path, root: Path, hosts_line: str) -> None:
    """Packages (installed if missing) and the root, without starting."""
    r = run.run([setup, "--policy", policy, "--no-start"], timeout=1800)
    assert r.returncode == 0, f"setup --no-start failed:\n{r.stdout}\n{r.stderr}"
    assert (root / ".peapod-built").is_file()
    assert hosts_line in (root / "etc" / "hosts").read_text()


def start_pod(run: PodRun, setup: Path, policy: Path, name: str, address: str, port: int,
              timeout: float) -> None:
    """Start: setup is idempotent (the root is kept, the pod starts)."""
    r = run.run([setup, "--policy", policy], timeout=timeout)
    assert r.returncode == 0, f"setup failed:\n{r.stdout}\n{r.stderr}"
    assert "is already built" in r.stdout
    assert f"answers on {address}:{port}" in r.stdout
    listed = {p["name"]: p for p in run.listed()}
    assert listed.get(name, {}).get("state") == "running", listed


# ------------------------------------------------------------------ the payload

# The attacker's payload, the same for every example: each pair of arguments
# is an operation (exec, create, write, read, list, connect) and a path.
PAYLOAD_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef CREATE_MODE
#define CREATE_MODE 0644
#endif
#ifndef EXEC_SCRIPT
#define EXEC_SCRIPT "print('it runs')"
#endif

/* The attacker's payload: each pair of arguments is an operation and a path;
   one line per pair, "OP PATH OK" or "OP PATH ERRNONAME". The first line is
   the unified-hierarchy line of /proc/self/cgroup: the pea it runs in. */
int main(int argc, char **argv) {
    char line[256], cg[256] = "";
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (f) {
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "0::", 3)) { strcpy(cg, line); break; }
        fclose(f);
    }
    cg[strcspn(cg, "\n")] = 0;
    printf("cgroup %s\n", cg);
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *op = argv[i], *path = argv[i + 1];
        int r;
        fflush(stdout);
        if (!strcmp(op, "exec")) {
            char *const args[] = {(char *)path, "-c", EXEC_SCRIPT, NULL};
            r = execv(path, args);
        } else if (!strcmp(op, "create")) {
            r = open(path, O_WRONLY | O_CREAT | O_EXCL, CREATE_MODE);
        } else if (!strcmp(op, "write")) {
            r = open(path, O_WRONLY | O_APPEND);
        } else if (!strcmp(op, "read")) {
            r = open(path, O_RDONLY);
        } else if (!strcmp(op, "list")) {
            r = open(path, O_RDONLY | O_DIRECTORY);   /* what opendir(3) does */
        } else if (!strcmp(op, "connect")) {
            struct sockaddr_un sa = {.sun_family = AF_UNIX};
            strncpy(sa.sun_path, path, sizeof sa.sun_path - 1);
            r = socket(AF_UNIX, SOCK_STREAM, 0);
            if (r >= 0 && connect(r, (struct sockaddr *)&sa, sizeof sa) < 0) {
                int e = errno;
                close(r);
                r = -1;
                errno = e;
            }
        } else {
            r = -1;
            errno = EINVAL;
        }
        printf("%s %s %s\n", op, path, r < 0 ? strerrorname_np(errno) : "OK");
        if (r >= 0) close(r);
    }
    return 0;
}
"""

def compile_probe(where: Path, *, create_mode: int = 0o644,
                  exec_script: str = "print('it runs')") -> Path:
    """The attacker's payload (PAYLOAD_C), compiled on the host into
    ``where``/probe: ``create`` makes files with ``create_mode``, ``exec``
    passes ``-c exec_script`` to the program."""
    src = where / "probe.c"
    src.write_text(PAYLOAD_C)
    binary = where / "probe"
    cc = subprocess.run(["gcc", "-O2", "-Wall", f"-DCREATE_MODE=0{create_mode:o}",
                         f"-DEXEC_SCRIPT={json.dumps(exec_script)}", "-o", str(binary), str(src)],
                        capture_output=True, text=True, timeout=120)
    assert cc.returncode == 0, f"gcc (installed by `make deps`) failed: {cc.stderr}"
    return binary


def plant(binary: Path, root: Path, pod_path: str, mode: int) -> None:
    """Put the payload at ``pod_path`` in the pod's root, with ``mode``."""
    dst = root / pod_path.lstrip("/")
    shutil.copyfile(binary, dst)
    os.chmod(dst, mode)


def pea_exec(run: PodRun, name: str, pea: str, *cmd, user: int | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess:
    """`pod exec NAME --pea PEA [--user UID] -- CMD...`."""
    who = ["--user", str(user)] if user is not None else []
    return run.pod("exec", name, "--pea", pea, *who, "--", *cmd, timeout=timeout)


def pairs_args(pairs) -> list[str]:
    """[(op, path), ...] as the payload's arguments: op path op path ..."""
    return [a for pair in pairs for a in pair]


def results_of(stdout: str) -> dict:
    """The payload's lines "OP PATH RESULT" as {(op, path): result}."""
    return {tuple(line.split()[:2]): line.split()[2] for line in stdout.splitlines()
            if len(line.split()) == 3 and not line.startswith("cgroup ")}


def assert_outcomes(results: dict, refused, allowed, who: str) -> None:
    for op, path in refused:
        assert results.get((op, path)) == "EACCES", f"{who}: {op} {path}: {results.get((op, path))}"
    for op, path in allowed:
        assert results.get((op, path)) == "OK", f"{who}: {op} {path}: {results.get((op, path))}"


def run_payload(run: PodRun, name: str, pea: str, path: str, refused, allowed, *,
                user: int | None = None) -> None:
    """The payload at ``path`` run with the dynamic loader in ``pea``: the
    loader only reads and maps the file, so no exec rule names it and no
    transition happens. Its first line (its cgroup) must name ``pea``; each
    of ``refused`` must fail with EACCES, each of ``allowed`` succeed."""
    who = pea if user is None else f"{pea} uid {user}"
    r = pea_exec(run, name, pea, LOADER, path, *pairs_args(refused + allowed), user=user)
    assert r.returncode == 0, f"{pea} probe: {r.returncode} {r.stdout} {r.stderr}"
    first = (r.stdout.splitlines() or [""])[0]
    assert first == f"cgroup 0::/{pea}", f"the payload is not in the {pea} pea: {first}"
    assert_outcomes(results_of(r.stdout), refused, allowed, who)


def assert_exec_refused(run: PodRun, name: str, pea: str, *cmd, output: str) -> None:
    """Executing ``cmd`` directly in ``pea`` is refused: exit 126, "Permission
    denied", and ``output`` (what it prints when it runs) is not printed."""
    r = pea_exec(run, name, pea, *cmd)
    assert r.returncode == 126 and output not in r.stdout, (cmd, r.returncode, r.stdout)
    assert "Permission denied" in r.stderr, (cmd, r.stderr)


# ------------------------------------------------------------------ the audit log

class Audit:
    """The pod's audit log (ROOT.peapod/audit.log, beside the staging root:
    pods/runtime.py; it outlives the pod), from its size at creation on."""

    def __init__(self, root: Path):
        self.path = runtime.audit_log(root)
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def entries(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]


def same_file(pod_path: str, other: str) -> bool:
    """Do two pod paths name the same file? /bin, /lib, /lib64 and /sbin are
    the host's symbolic links into /usr, mounted as directories of their
    own, so PeaFS may log an object under either name; the pod's mounts are
    the host's directories, so the host resolves both the same way."""
    return os.path.realpath(pod_path) == os.path.realpath(other)


def audit_entry_for(pea: str, op: str, path: str, entries: list[dict]) -> dict | None:
    """The audit line that the refusal of (op, path) in ``pea`` writes."""
    for e in entries:
        if e.get("pea") != pea or e.get("complain"):
            continue
        if op == "exec":
            # The kernel opens the file the symlinks lead to (/usr/bin/dash).
            if e["operation"] == "exec" and e["need"] == "x" and same_file(e["path"], path):
                return e
        elif op == "create":
            # Creating is a write in the directory: the refused path is the directory.
            if (e["operation"] == "create" and "w" in e["need"]
                    and same_file(e["path"], os.path.dirname(path))):
                return e
        elif op == "list":
            if e["operation"] == "opendir" and same_file(e["path"], path) and "r" in e["need"]:
                return e
        elif op in ("write", "read"):
            want = "w" if op == "write" else "r"
            if e["operation"] == "open" and same_file(e["path"], path) and want in e["need"]:
                return e
    return None


def assert_audited(entries: list[dict], name: str, pea: str, refused, uid: int,
                   not_audited=()) -> None:
    """Each (op, path) of ``refused`` (but those in ``not_audited``) has its
    audit line, by ``uid`` in ``pea`` of pod ``name``, not in complain mode."""
    mine = [e for e in entries if e.get("uid") == uid]
    for op, path in refused:
        if (op, path) in not_audited:
            continue
        e = audit_entry_for(pea, op, path, mine)
        assert e is not None, f"no audit line for {pea} uid {uid}: {op} {path} in {entries}"
        assert e["pod"] == name and e["uid"] == uid and e["complain"] is False, e


# ------------------------------------------------------------------ teardown

def mounts_under(*dirs: Path) -> list[str]:
    """Mount points in this (the host's) mount namespace at or below ``dirs``."""
    found = []
    with open("/proc/mounts") as f:
        for line in f:
            mp = line.split()[1].encode().decode("unicode_escape")
            for d in dirs:
                if mp == str(d) or mp.startswith(str(d).rstrip("/") + "/"):
                    found.append(mp)
    return found


def leftovers(run: PodRun, name: str, root: Path) -> list[str]:
    found = []
    if any(p.get("name") == name for p in run.listed()):
        found.append(f"pod {name} in `pod list`")
    found += [f"mount {mp}" for mp in mounts_under(root, run.dir)]
    pids = set(cgroup.pids_in(name)) | set(limits.v1_pids(name))
    if pids:
        found.append(f"processes {sorted(pids)}")
    for d in [cgroup.pod_cgroup(name), *limits.v1_dirs(name)]:
        if d.exists():
            found.append(f"cgroup {d}")
    if netns.veth_exists(name):
        found.append(f"veth {netns.host_ifname(name)}")
    if (run.dir / "pods" / name).exists():
        found.append(f"runtime dir {run.dir / 'pods' / name}")
    return found


def forced_cleanup(run: PodRun, name: str) -> None:
    """After a failed test: stop the pod, then remove by force what is left."""
    try:
        run.pod("stop", name, "--timeout", "5", timeout=90)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 10
    while (cgroup.pids_in(name) or limits.v1_pids(name)) and time.monotonic() < deadline:
        limits.kill_all(name)
        time.sleep(0.05)
    for d in [cgroup.pod_cgroup(name), *limits.v1_dirs(name)]:
        if d.exists():
            for sub in sorted(d.glob("*/"), reverse=True):
                try:
                    os.rmdir(sub)
                except OSError:
                    pass
            try:
                os.rmdir(d)
            except OSError:
                pass
    if netns.veth_exists(name):
        netns.del_veth(name)
    shutil.rmtree(run.dir / "pods" / name, ignore_errors=True)


def safe_rmtree(path: Path) -> None:
    """Remove a pod root, but never through a mount (a bind of the host's
    /usr left below it would otherwise be emptied)."""
    mounted = mounts_under(path)
    assert not mounted, f"not removing {path}: still mounted below it: {mounted}"
    shutil.rmtree(path, ignore_errors=True)


def teardown(run: PodRun, name: str, root: Path,
             stop_timeout: int) -> tuple[subprocess.CompletedProcess | None, list[str]]:
    """`pod stop`, then what it left (``leftovers``), removed by force if
    anything; the root and its ROOT.peapod are removed in every case.
    Returns (the stop's result, None if it timed out; what was left)."""
    try:
        stop = run.pod("stop", name, "--timeout", str(stop_timeout), timeout=120)
    except subprocess.TimeoutExpired:
        stop = None
    left = leftovers(run, name, root)
    if left:
        forced_cleanup(run, name)
    safe_rmtree(root)
    shutil.rmtree(runtime.lasting_dir(root), ignore_errors=True)
    return stop, left


def assert_clean(stop: subprocess.CompletedProcess | None, left: list[str], root: Path) -> None:
    """After a test that passed: the stop worked and left nothing."""
    assert stop is not None and stop.returncode == 0, f"pod stop: {stop and stop.stderr}"
    assert not left, f"left behind after pod stop: {left}"
    assert not root.exists()


@pytest.fixture
def e2e():
    return types.SimpleNamespace(
        REPO=REPO, LOADER=LOADER, copy_policy=copy_policy, free_address=free_address,
        PodRun=PodRun, build_root=build_root, start_pod=start_pod, compile_probe=compile_probe,
        plant=plant, pea_exec=pea_exec, pairs_args=pairs_args, results_of=results_of,
        assert_outcomes=assert_outcomes, run_payload=run_payload,
        assert_exec_refused=assert_exec_refused, Audit=Audit, same_file=same_file,
        audit_entry_for=audit_entry_for, assert_audited=assert_audited, leftovers=leftovers,
        forced_cleanup=forced_cleanup, mounts_under=mounts_under, safe_rmtree=safe_rmtree,
        teardown=teardown, assert_clean=assert_clean, examplelib=ex)
