"""Pods: start-up, `pod exec` latency, and the paper's micro-benchmarks.

``python -m bench pod [--quick]``, as root. Three groups of rows, each leg
alternated with its reference inside one run, medians reported:

- start: time from `pod start` to the first command having run (`pod start`
  then `pod exec true`), and `pod start` alone.
- exec: latency of `pod exec POD true`, against `nsenter` into every
  namespace of a process made by `unshare` (the bare kernel cost of entering
  a set of namespaces), and against bubblewrap (`bwrap --unshare-all` with a
  read-only /usr, making its namespaces anew each time: what a one-shot
  sandbox costs).
- micro: the paper's micro-benchmarks (Pea-Pod paper, section 6, Table 2):
  getpid, fork-exit, fork-sh, shmget+shmctl, semget+semctl, as a small C
  program compiled here, run inside a pod (through the seccomp filter, PeaFS
  for exec, the pod's namespaces) and on the host; ratio pod/host. fork-exit
  and fork-sh also run chrooted into bindfs of a root made like the pod's
  (the host's /usr bound in, as the pod's [[pod.mount]]): the FUSE floor,
  so bindfs/host is what FUSE costs and pod/bindfs what the pod adds to it.
  The legs are rotated inside each repetition.

The pod is a policy with one pea ("/" = "rwx"), a staging dir with the
host's /usr bound read-only, $PEAPOD_RUN in a temporary directory.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common

REPO = Path(__file__).resolve().parent.parent
# The `pod` command as installed (`make deps`): `pod exec` is its C front's
# (pods/pod_front.c), which is what an administrator's `pod exec` costs.
POD = [str(Path(sys.prefix) / "bin" / "pod")]

MICRO_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv) {
    const char *what = argv[1];
    long n = atol(argv[2]);
    double t0 = now();
    for (long i = 0; i < n; i++) {
        if (!strcmp(what, "getpid")) {
            syscall(SYS_getpid);               /* no libc caching */
        } else if (!strcmp(what, "fork-exit")) {
            pid_t p = fork();
            if (p == 0) _exit(0);
            waitpid(p, NULL, 0);
        } else if (!strcmp(what, "fork-sh")) {
            pid_t p = fork();
            if (p == 0) {
                execl("/bin/sh", "sh", "-c", "echo hello world >/dev/null", (char *)0);
                _exit(127);
            }
            waitpid(p, NULL, 0);
        } else if (!strcmp(what, "shmget-shmctl")) {
            int id = shmget(IPC_PRIVATE, sizeof(int), IPC_CREAT | 0600);
            if (id < 0 || shmctl(id, IPC_RMID, NULL) < 0) { perror("shm"); return 1; }
        } else if (!strcmp(what, "semget-semctl")) {
            int id = semget(IPC_PRIVATE, 1, IPC_CREAT | 0600);
            if (id < 0 || semctl(id, 0, IPC_RMID) < 0) { perror("sem"); return 1; }
        } else {
            fprintf(stderr, "unknown benchmark %s\n", what); return 2;
        }
    }
    printf("%.1f\n", (now() - t0) / n);
    return 0;
}
"""

MICRO = {  # name -> iterations (full run); --quick divides by 10
    "getpid": 2_000_000,
    "fork-exit": 2_000,
    "fork-sh": 300,
    "shmget-shmctl": 50_000,
    "semget-semctl": 50_000,
}
# The micro-benchmarks with a bindfs leg: those that fork, or exec from the
# root (the others make no file-system request).
BINDFS_MICRO = ("fork-exit", "fork-sh")


def _run(cmd, env=None, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, **kw)


def _timed(cmd, env=None) -> float:
    t0 = time.perf_counter()
    r = _run(cmd, env=env)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))}: {r.returncode} {r.stderr.strip()}")
    return dt


def make_root(root: Path) -> None:
    """The pod's staging tree (and the bindfs leg's): /usr comes from the host."""
    root.mkdir()
    for d in ("etc", "tmp", "root"):
        (root / d).mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    for link in ("bin", "lib", "lib64", "sbin"):
        os.symlink(f"usr/{link}", root / link)


class BenchPod:
    """A throw-away pod for the benchmark."""

    def __init__(self, base: Path):
        self.base = base
        self.run_dir = base / "run"
        self.env = dict(os.environ, PEAPOD_RUN=str(self.run_dir), PYTHONPATH=str(REPO))
        self.root = base / "root"
        make_root(self.root)
        self.name = f"bench{os.getpid() % 100000}{random.randrange(1 << 12):03x}"
        base_id = 3_000_000 + random.randrange(1000) * 65536
        self.policy = base / "pod.toml"
        self.policy.write_text(
            f'[pod]\nname = "{self.name}"\nroot = "{self.root}"\n'
            f"uid_map = [[0, {base_id}, 65536]]\ngid_map = [[0, {base_id}, 65536]]\n"
            'default_pea = "main"\n\n[[pod.mount]]\nhost = "/usr"\npath = "/usr"\n\n'
            '[pea.main.files]\n"/" = "rwx"\n')

    def start(self) -> None:
        r = _run(POD + ["start", str(self.policy)], env=self.env)
        if r.returncode != 0:
            raise RuntimeError(f"pod start: {r.stderr.strip()}")

    def exec_cmd(self, *cmd) -> list[str]:
        return POD + ["exec", self.name, "--", *cmd]

    def stop(self) -> None:
        _run(POD + ["stop", self.name], env=self.env)


def _median_ms(xs) -> float:
    return statistics.median(xs) * 1000


def bench_start(pod: BenchPod, reps: int) -> list[dict]:
    start_only, to_first = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        pod.start()
        t1 = time.perf_counter()
        _timed(pod.exec_cmd("true"), env=pod.env)
        t2 = time.perf_counter()
        pod.stop()
        start_only.append(t1 - t0)
        to_first.append(t2 - t0)
    return [
        {"group": "start", "what": "pod start", "ms": _median_ms(start_only), "ref": None,
         "ref_ms": None, "ratio": None},
        {"group": "start", "what": "pod start + first exec", "ms": _median_ms(to_first),
         "ref": None, "ref_ms": None, "ratio": None},
    ]


def bench_exec(pod: BenchPod, reps: int) -> list[dict]:
    # A namespace set made by unshare, entered by nsenter each time.
    # --kill-child: killing unshare must take its forked child (pid 1 of
    # the new pid namespace) with it, or the sleep outlives the benchmark.
    holder = subprocess.Popen(["unshare", "--user", "--map-root-user", "--mount", "--pid",
                               "--fork", "--kill-child", "--ipc", "--uts", "--net", "--cgroup",
                               "--mount-proc", "sleep", "3600"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL)
    try:
        target = None
        deadline = time.monotonic() + 10
        while target is None and time.monotonic() < deadline:
            kids = Path(f"/proc/{holder.pid}/task/{holder.pid}/children").read_text().split()
            target = int(kids[0]) if kids else None
            time.sleep(0.01)
        nsenter = ["nsenter", "-t", str(target), "-U", "-m", "-p", "-i", "-u", "-n", "-C",
                   "--preserve-credentials", "true"]
        bwrap = ["bwrap", "--unshare-all", "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin",
                 "/bin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                 "--proc", "/proc", "--dev", "/dev", "true"]
        podexec = pod.exec_cmd("true")
        times = {"pod": [], "nsenter": [], "bwrap": []}
        for cmd in (podexec, nsenter, bwrap):  # warm-up
            _timed(cmd, env=pod.env)
        for _ in range(reps):
            times["pod"].append(_timed(podexec, env=pod.env))
            times["nsenter"].append(_timed(nsenter))
            times["bwrap"].append(_timed(bwrap))
    finally:
        holder.kill()
        holder.wait()
    pod_ms = _median_ms(times["pod"])
    rows = []
    for ref, label in (("nsenter", "unshare + nsenter true"), ("bwrap", "bwrap true")):
        ref_ms = _median_ms(times[ref])
        rows.append({"group": "exec", "what": "pod exec true", "ms": pod_ms, "ref": label,
                     "ref_ms": ref_ms, "ratio": pod_ms / ref_ms})
    return rows


class BindfsChroot:
    """The bindfs leg of the micro-benchmarks: a root made like the pod's,
    with the host's /usr bound in as the pod's [[pod.mount]] is, served by
    bindfs (bench/common.py); each run chroots into it, in a private mount
    namespace that binds /dev/null in (fork-sh writes there)."""

    def __init__(self, base: Path, binary: Path):
        src = base / "bindfs-src"
        make_root(src)
        (src / "dev").mkdir()
        (src / "dev" / "null").touch()
        shutil.copy2(binary, src / "tmp" / "micro")
        self.fs = common.BindfsRoot(src, base / "bindfs-mnt", [common.HostMount("/usr", "/usr")])

    def cmd(self, *args: str) -> list[str]:
        mnt = self.fs.mnt
        return ["unshare", "-m", "--propagation", "private", "/bin/sh", "-c",
                f'mount --bind /dev/null "{mnt}/dev/null" && exec chroot "{mnt}" "$@"',
                "sh", *args]


def bench_micro(pod: BenchPod, reps: int, quick: bool) -> list[dict]:
    src = pod.base / "micro.c"
    src.write_text(MICRO_C)
    binary = pod.root / "tmp" / "micro"
    r = _run(["gcc", "-O2", "-o", str(binary), str(src)])
    if r.returncode != 0:
        raise RuntimeError(f"gcc: {r.stderr}")
    chroot = BindfsChroot(pod.base, binary)
    rows = []
    with chroot.fs:
        for name, n in MICRO.items():
            n = max(10, n // 10) if quick else n
            cmds = {"host": [str(binary), name, str(n)],
                    "pod": pod.exec_cmd("/tmp/micro", name, str(n))}
            if name in BINDFS_MICRO:
                cmds["bindfs"] = chroot.cmd("/tmp/micro", name, str(n))
            legs = list(cmds)
            got: dict[str, list[float]] = {leg: [] for leg in legs}
            for i in range(reps):
                for leg in legs[i % len(legs):] + legs[:i % len(legs)]:   # rotated
                    r = _run(cmds[leg], env=pod.env)
                    if r.returncode:
                        raise RuntimeError(f"micro {name} ({leg}): {r.stderr}")
                    got[leg].append(float(r.stdout))
            med = {leg: statistics.median(got[leg]) / 1e6 for leg in legs}
            row = {"group": "micro", "what": name, "ms": med["pod"], "ref": "host",
                   "ref_ms": med["host"], "ratio": med["pod"] / med["host"]}
            if "bindfs" in med:
                row.update({"bindfs_ms": med["bindfs"],
                            "bindfs/host": med["bindfs"] / med["host"],
                            "pod/bindfs": med["pod"] / med["bindfs"]})
            rows.append(row)
    return rows


def run(args) -> dict:
    if os.geteuid() != 0:
        raise SystemExit("bench pod: needs root (namespaces, cgroups, FUSE)")
    for tool in ("unshare", "nsenter", "bwrap", "gcc"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench pod: {tool} is not installed")
    if not Path(POD[0]).is_file():
        raise SystemExit(f"bench pod: {POD[0]} is missing: run `make deps`")
    quick = bool(getattr(args, "quick", False))
    base = Path(tempfile.mkdtemp(prefix="bench-pod-"))
    os.chmod(base, 0o755)
    pod = BenchPod(base)
    rows: list[dict] = []
    try:
        rows += bench_start(pod, 2 if quick else 5)
        pod.start()
        try:
            rows += bench_exec(pod, 5 if quick else 30)
            rows += bench_micro(pod, 1 if quick else 5, quick)
        finally:
            pod.stop()
    finally:
        left = common.remove_tree(base)
        if left:
            print(f"bench pod: still mounted, {base} kept: {left}", file=sys.stderr)
    return {"rows": rows, "notes": "ms: median wall time per run (exec, start) or per "
                                   "operation (micro); ratio = ms / ref_ms"}
