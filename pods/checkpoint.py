"""`pod checkpoint` and `pod restore`, the daemon's side (docs/MIGRATION.md).

A checkpoint saves a running pod's processes, tree by tree, with CRIU run
inside the pod (pods/criu.py), and with them what the daemon holds that a
new daemon needs (pod.json); a restore is a `pod start` of the saved policy
whose daemon puts those trees back before it starts the other services.

**The whole pod is held still for a checkpoint** (pods/podhold.py). criu's
parasite and descriptor store use abstract Unix sockets that no pea's map
holds, so the peas' abstract-Unix programs must be off while criu runs
(MIGRATION.md 2.12). A pod process that ran meanwhile could connect to
criu's sockets and feed criu, host root, what it likes. So, in order:

1. every pod process but pid 1 (ours) is stopped (SIGSTOP; the cgroup
   freezer cannot be used: the parasite cannot run in a frozen task);
2. the abstract-Unix programs of every pea are detached (pods/netbpf.py
   suspend), their descriptors kept;
3. criu dumps each tree with --leave-running, which leaves a stopped task
   stopped;
4. the programs are attached again, and the hold is checked: if any pod
   process ran during the dump, the image is thrown away;
5. with --leave-running the pod goes on (SIGCONT); otherwise its processes
   are killed before they run again (a message a restored mail server
   accepted after the dump would be accepted twice) and the pod stops.

The same hold gives every tree's image the same instant.

**Trees.** A pod is not one process tree (MIGRATION.md 2.1): each service
hangs off a host-side tagger monitor, and a daemonized program off pid 1.
A tree is a pod process whose parent is not a pod process, or is pid 1.
pid 1 itself is never dumped (a host program: MIGRATION.md 2.5). A `pod
exec` tree (its standard streams are a client's) is refused: a checkpoint
keeps services and what they started.

**Restore** (``restore``, in a new daemon, before its control socket and
its services): B's next pid is set past the image's highest, each tree is
restored with --leave-stopped into B's namespaces and the IPC namespace of
its pea, every restored process is checked to be in a pea of the policy,
the programs are attached again, each process gets the pod's seccomp
filter with a listener for B's supervisor (pods/seccomp_rearm.py), and
only then does it run (SIGCONT). The services whose trees came back are
adopted (pods/services.py); their output goes to new log pipes handed to
criu with --inherit-fd.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import trio

from kernel import cgroup, procfs
from pods import ckptimage, criu, netbpf, podhold, seccomp_rearm
from pods.startup import child_env, python_command

POD_JSON = "pod.json"
POLICY = "policy.toml"
HOLD_TIMEOUT = 10.0
CRIU_TIMEOUT = 120.0
# Where a restore copies the image before it verifies it (root's, on disk:
# images may be tens of MB).
RESTORE_WORK = "/var/tmp"


class CheckpointError(Exception):
    """A checkpoint or a restore failed; the message is one line for the user."""


# ------------------------------------------------------------ the pod's trees

def _ns_ino(pid: int, what: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{what}").st_ino
    except OSError:
        return None


def _max_vpid(pids) -> int:
    """The highest pid, in the pod, of these processes, their threads and
    their zombie children. The restore makes every pid up to it taken
    before criu forks anything (_set_last_pid). A zombie is in no
    cgroup.procs, so not in ``pids``, yet criu dumps it with its parent and
    forks it again with its pid: left out, that pid went to criu's cgroup
    daemon and the restore failed ("Can't fork for N: File exists")."""
    tasks = set()         # a live child is also in ``pids``: read it once
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            tasks.add(tid)
            tasks.update(procfs.children(pid, tid))
    top = 0
    for p in tasks:
        ns_ids = procfs.nspid(p)
        if ns_ids:
            top = max(top, ns_ids[-1])
    return top


def _descriptors(pids, pod_mounts: set[int]) -> tuple[set[str], set[int]]:
    """One walk of the descriptors of ``pids``: (criu's keys, file[MNT:INO],
    of those whose mount the pod does not have, the inodes of their
    pipes). The first are the host's /dev/null the daemon gives a service
    as standard input: criu must be told they are external (dump) and be
    handed a replacement (restore: --inherit-fd). Of the pipes, those that
    are a service's log pipe are handed a new one at restore."""
    external, pipes = set(), set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            m = re.fullmatch(r"pipe:\[(\d+)\]", target)
            if m:
                pipes.add(int(m.group(1)))
                continue
            if not target.startswith("/"):
                continue
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    info = dict(line.split(":\t", 1) for line in f.read().splitlines()
                                if ":\t" in line)
                mnt = int(info.get("mnt_id", "-1"))
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except (OSError, ValueError):
                continue
            if mnt not in pod_mounts:
                external.add("file[%x:%x]" % (mnt, st.st_ino))
    return external, pipes


def _mount_ids(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            return {int(line.split()[0]) for line in f}
    except OSError:
        return set()


def _ours(daemon) -> set[int]:
    """The pod's processes that run our code, never dumped nor held: pid 1
    and the keeper that forked it (a host process in the pod's cgroup)."""
    return {p for p in (daemon.init_pid, daemon.keeper.pid if daemon.keeper else None) if p}


def find_trees(daemon) -> list[dict]:
    """The pod's process trees: [{"root": host pid, "pids": [...], "service":
    name or None}], parents before children. CheckpointError for a `pod
    exec` tree."""
    init = daemon.init_pid
    ours = _ours(daemon)
    pids = [p for p in cgroup.pids_in(daemon.name)
            if p not in ours and cgroup.pea_of(p, daemon.name) != cgroup.CHECKPOINT]
    parent = {p: procfs.ppid(p) for p in pids}
    # A process that exited since the listing has no parent to read: it is
    # no tree of its own (it was taken for a `pod exec` tree).
    parent = {p: pp for p, pp in parent.items() if pp is not None}
    pids = list(parent)
    service_of = {st.pid: st.spec.name for st in daemon.services.states if st.pid}
    members: dict[int, list[int]] = {}
    for p in pids:
        root = p
        while parent.get(root) in parent:        # up to the first parent outside
            root = parent[root]
        members.setdefault(root, []).append(p)
    trees, execs = [], []
    for root, group in sorted(members.items()):
        if root in service_of:
            trees.append({"root": root, "pids": sorted(group), "service": service_of[root]})
        elif parent.get(root) == init:
            trees.append({"root": root, "pids": sorted(group), "service": None})
        else:
            execs.append(root)
    if execs:
        raise CheckpointError(
            f"`pod exec` commands are running in pod {daemon.name} (host pids "
            f"{', '.join(map(str, execs))}): a checkpoint keeps services and what they "
            f"started; end them first")
    return trees


# Signals the kernel sends by itself, with no pod code running, that would
# wake (SIGCONT) or kill (SIGKILL: the death can wake a process group it
# orphans) a held process while the peas' programs are off. fcntl(F_SETSIG)
# of either is refused by the pod's filter (pods/seccomp.py); a POSIX timer's
# signal is in memory, so it is read here, from /proc/PID/timers.
WAKERS = {signal.SIGCONT: "SIGCONT", signal.SIGKILL: "SIGKILL"}


def _timers_that_wake(pids) -> list[str]:
    """"HOST PID (SIGNAL)" for each held process with a POSIX timer whose
    signal is in WAKERS. Read while the pod is held: no timer can be made
    or changed meanwhile."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/timers") as f:
                text = f.read()
        except OSError:
            continue
        for block in text.split("ID:")[1:]:
            fields = dict(line.split(":", 1) for line in block.splitlines()[1:] if ":" in line)
            try:
                signo = int(fields.get("signal", "0").split("/")[0])
            except ValueError:
                continue
            if signo in WAKERS and not fields.get("notify", "").strip().startswith("none"):
                out.append(f"{pid} ({WAKERS[signo]})")
                break
    return out


# ------------------------------------------------------------ running criu

def _unix_programs(daemon) -> dict[str, dict[str, int]]:
    return {pea: {h: fd for h, fd in progs.items() if h in netbpf.UNIX_HOOKS}
            for pea, progs in daemon.net_progs.items()}


def _suspend(daemon, progs) -> None:
    for pea, hooks in progs.items():
        netbpf.suspend(str(cgroup.pea_cgroup(daemon.name, pea)), hooks)


def _resume(daemon, progs) -> list[str]:
    problems = []
    for pea, hooks in progs.items():
        try:
            netbpf.resume(str(cgroup.pea_cgroup(daemon.name, pea)), hooks)
        except OSError as e:
            problems.append(f"pea {pea}: {e}")
    return problems


def _checkpoint_cgroup(name: str) -> Path:
    d = cgroup.pea_cgroup(name, cgroup.CHECKPOINT)
    d.mkdir(exist_ok=True)
    return d


def _remove_checkpoint_cgroup(name: str) -> None:
    try:
        os.rmdir(cgroup.pea_cgroup(name, cgroup.CHECKPOINT))
    except OSError:
        pass


def _run_criu(daemon, binary: str, kdat: Path, img: Path, ns_pid_fd: int, ipc_fd: int | None,
              args: list[str], *, restore: bool, keep_fds=()) -> tuple[int, float]:
    """One criu run through the launcher (pods/criu.py main), blocking.
    Returns (exit status, seconds)."""
    fds = {"criu": os.open(binary, os.O_RDONLY | os.O_CLOEXEC),
           "img": os.open(img, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC),
           "kdat": os.open(kdat, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)}
    try:
        argv = criu.launcher_argv(
            python_command("pods.criu"),
            cgroup_procs=str(_checkpoint_cgroup(daemon.name) / "cgroup.procs"),
            ns_fd=ns_pid_fd, ipc_fd=ipc_fd, criu_fd=fds["criu"], kdat_fd=fds["kdat"],
            img_fd=fds["img"], restore=restore, criu_args=args)
        passed = [ns_pid_fd, *fds.values(), *keep_fds] + ([ipc_fd] if ipc_fd is not None else [])
        start = time.monotonic()
        try:
            r = subprocess.run(argv, pass_fds=passed, env=child_env(), cwd="/",
                               stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=CRIU_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise CheckpointError(f"criu did not finish in {CRIU_TIMEOUT:g} s "
                                  f"(its log: {img}/*.log)") from None
        return r.returncode, time.monotonic() - start
    finally:
        for fd in fds.values():
            os.close(fd)


def _criu_failure(img: Path, log: str, what: str) -> CheckpointError:
    """The error of a failed criu run: its last "Error" lines."""
    try:
        lines = (img / log).read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    errs = [ln.split(": ", 1)[-1] for ln in lines if "Error" in ln and "RLIMIT_NOFILE" not in ln]
    if any("Connected TCP socket" in e for e in errs):
        # criu's own advice (--tcp-established) does not apply to a pod
        # (the dump's comment says why): say what the administrator can do.
        return CheckpointError(f"{what} failed: a TCP connection is open, and a checkpoint "
                               f"keeps none; the pod goes on: try again when its clients are "
                               f"done (log: {img / log})")
    tail = "; ".join((errs or lines or ["no log"])[-3:])
    return CheckpointError(f"{what} failed: {tail} (log: {img / log})")


def _criu_version(binary: str) -> str:
    r = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    m = re.search(r"Version:\s*(\S+)", r.stdout)
    return m.group(1) if m else "?"


# ------------------------------------------------------------ checkpoint

def _checkpoint(daemon, directory: Path, leave_running: bool) -> dict:
    """The blocking body of ``checkpoint`` (run in a thread)."""
    binary = criu.binary()
    ipc_pea = {os.fstat(fd).st_ino: pea for pea, fd in daemon.ipc_ns.items()}
    log_pipes = {st.log_pipe: st.spec.name for st in daemon.services.states if st.log_pipe}
    started = time.monotonic()
    with criu.FeatureCache(binary) as kdat:
        held = podhold.hold(daemon.name, keep=_ours(daemon), timeout=HOLD_TIMEOUT)
        if daemon.session is not None:
            # An exec that committed just before the hold: its move to the
            # new pea is applied now, so that the image records that pea.
            daemon.session.settle()
        kill = not leave_running
        must_stop = False   # the programs could not be attached again
        try:
            # The trees, read while nothing forks or exits. Read before the
            # hold, a process that exited meanwhile had no parent to read
            # and made its tree look like a `pod exec`'s (the mail pod's
            # deliveries, tests/e2e/test_mail_move.py), and a process forked
            # meanwhile was missing from its tree's pids.
            trees = find_trees(daemon)
            if not trees:
                raise CheckpointError(f"pod {daemon.name} has no process to checkpoint")
            progs = _unix_programs(daemon)
            # The tree's facts, read while nothing moves.
            pod_mounts = _mount_ids(daemon.init_pid)
            for i, t in enumerate(trees, 1):
                t["dir"] = f"tree-{i}"
                t["vpid"] = procfs.vpid(t["root"])
                t["ipc_pea"] = ipc_pea.get(_ns_ino(t["root"], "ipc"))
                t["pea"] = cgroup.pea_of(t["root"], daemon.name)
                external, pipes = _descriptors(t["pids"], pod_mounts)
                t["external"] = sorted(external)
                t["log_pipes"] = {str(ino): log_pipes[ino] for ino in pipes if ino in log_pipes}
            max_vpid = _max_vpid(p for t in trees for p in t["pids"])
            wakers = _timers_that_wake(held.pidfds)
            if wakers:
                raise CheckpointError(
                    f"processes of pod {daemon.name} have a timer that sends a signal the "
                    f"hold cannot stop (host pid: {', '.join(wakers)}): they could run "
                    f"during the dump; a checkpoint is refused while they have one")
            _suspend(daemon, progs)
            try:
                for t in trees:
                    img = directory / t["dir"]
                    img.mkdir(mode=0o700)
                    pidfd = os.pidfd_open(t["root"])
                    try:
                        # --file-locks: a database holds its files locked
                        # (MariaDB); they are taken again at restore.
                        # --leave-running: every tree stays (stopped) until
                        # all are dumped, so that a tree that fails leaves
                        # the pod whole. Established TCP connections are not kept
                        # (--tcp-established): their restore sets TCP_REPAIR
                        # from inside the task, which needs CAP_NET_ADMIN
                        # over the pod's network namespace, which pod root
                        # never has (MIGRATION.md 2.14).
                        # --skip-in-flight: a connection the kernel
                        # completed into a listening socket's queue that
                        # the held server never accepted is dropped (its
                        # client sees a reset; nothing of it was taken).
                        args = ["dump", "-t", str(t["vpid"]), "-D", "IMG", "-o", "dump.log",
                                "-v4", "--shell-job", "--file-locks", "--leave-running",
                                "--skip-in-flight"]
                        for key in t["external"]:
                            args += ["--external", key]
                        rc, secs = _run_criu(daemon, binary, kdat.dir, img, pidfd, None, args,
                                             restore=False)
                    finally:
                        os.close(pidfd)
                    t["seconds"] = round(secs, 3)
                    if rc != 0:
                        raise _criu_failure(img, "dump.log", f"dump of tree {t['dir']} "
                                            f"(pid {t['vpid']} in the pod)")
            finally:
                problems = _resume(daemon, progs)
                _remove_checkpoint_cgroup(daemon.name)
            if problems:
                must_stop = True        # never run on without its programs
                raise CheckpointError("could not attach the abstract-Unix programs again ("
                                      + "; ".join(problems) + ")")
            ran = held.verify()
            if ran:
                raise CheckpointError(f"pod processes ran during the dump (host pids "
                                      f"{', '.join(map(str, ran))}): the image is not used")
        except BaseException:
            _discard(directory)
            # A refusal or a failure: the pod goes on as it was, unless its
            # programs could not be put back (checkpoint() stops it).
            if must_stop:
                daemon.checkpoint_stops = True
                held.kill()
            held.release()
            raise
        if kill:
            # Before anything runs again: the services are not restarted.
            daemon.checkpoint_stops = True
            held.kill()
        seconds = time.monotonic() - started
        meta = {
            "pod": daemon.name,
            "peapod_format": ckptimage.FORMAT,
            "criu": _criu_version(binary),
            "kernel": platform.release(),
            "machine": platform.machine(),
            "max_vpid": max_vpid,
            "root": str(Path(daemon.policy.root).resolve()),
            "uid_map": [list(r) for r in daemon.policy.uid_map],
            # PeaFS's hard-link rules (kept with the root in ROOT.peapod/;
            # here too, for a root copied without them).
            "links": daemon.session.policy.links() if daemon.session is not None else {},
            "net": daemon.state.get("net"),
            "services": {st.spec.name: {"state": st.state, "restarts": st.restarts}
                         for st in daemon.services.states},
            "trees": [{k: t[k] for k in ("dir", "vpid", "pea", "ipc_pea", "service",
                                          "external", "log_pipes", "seconds")}
                      for t in trees],
        }
        (directory / POLICY).write_bytes(Path(daemon.state["policy"]).read_bytes())
        (directory / POD_JSON).write_text(json.dumps(meta, indent=1) + "\n")
        ckptimage.write_manifest(directory, {"pod": daemon.name, "criu": meta["criu"]})
    # With kill, SIGKILL went first: the SIGCONT only closes the pidfds.
    held.release()
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    return {"ok": True, "trees": len(trees), "seconds": round(seconds, 3), "bytes": size,
            "stopped": kill}


def _discard(directory: Path) -> None:
    """Remove what a failed checkpoint wrote but criu's logs (an image that
    is not complete must not look like one: no manifest is left)."""
    for entry in sorted(directory.rglob("*"), reverse=True) if directory.is_dir() else []:
        try:
            if entry.is_dir() and not entry.is_symlink():
                if not any(entry.iterdir()):
                    entry.rmdir()
            elif not entry.name.endswith(".log"):
                entry.unlink()
        except OSError:
            pass


def _only_failed_logs(d: Path) -> bool:
    """Does ``d`` hold nothing but what a failed checkpoint keeps: tree-N
    directories of criu logs (``_discard``), no manifest, no link?"""
    for tree in d.iterdir():
        if not re.fullmatch(r"tree-\d+", tree.name) or tree.is_symlink() or not tree.is_dir():
            return False
        for f in tree.iterdir():
            if f.is_symlink() or not f.is_file() or not f.name.endswith(".log"):
                return False
    return True


async def checkpoint(daemon, directory: str, leave_running: bool) -> dict:
    """The control socket's "checkpoint" request. ``directory`` must be an
    absolute path of an empty or missing directory on the host."""
    d = Path(directory)
    if not d.is_absolute():
        raise CheckpointError(f"{directory}: the image directory must be an absolute path")
    try:
        d.mkdir(mode=0o700, parents=False)
    except FileExistsError:
        if not d.is_dir() or d.is_symlink():
            raise CheckpointError(f"{d}: exists and is not a directory") from None
        if any(d.iterdir()):
            if not _only_failed_logs(d):
                raise CheckpointError(f"{d}: not empty (a checkpoint never writes over an "
                                      f"image)") from None
            # What a failed checkpoint left (its criu logs): tried again.
            for tree in d.iterdir():
                shutil.rmtree(tree)
    except FileNotFoundError:
        raise CheckpointError(f"{d.parent}: no such directory") from None
    try:
        result = await trio.to_thread.run_sync(_checkpoint, daemon, d, leave_running)
    except (CheckpointError, podhold.HoldError, criu.CriuError, OSError) as e:
        if daemon.checkpoint_stops:
            daemon.stop_event.set()
            raise CheckpointError(f"{e}; the pod is stopped") from None
        raise CheckpointError(str(e)) from None
    if result.get("stopped"):
        daemon.stop_event.set()
    return result


# ------------------------------------------------------------ restore

def read_image(directory: str) -> tuple[Path, dict]:
    """The verified image (pods/ckptimage.py) and its pod.json, or
    CheckpointError saying what is wrong with it."""
    d = Path(directory)
    try:
        ckptimage.read_manifest(d)
        meta = json.loads((d / POD_JSON).read_text())
    except ckptimage.ImageError as e:
        raise CheckpointError(str(e)) from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{d / POD_JSON}: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("trees"), list):
        raise CheckpointError(f"{d / POD_JSON}: not a Pea-Pod checkpoint")
    if meta.get("machine") != platform.machine():
        raise CheckpointError(f"{d}: made on {meta.get('machine')}, this host is "
                              f"{platform.machine()}")
    return d, meta


def _set_last_pid(daemon, last: int) -> None:
    """B's next pid is last + 1, so that the image's pids stay free: the
    launcher writes ns_last_pid from B's pid namespace (pods/criu.py)."""
    argv = criu.launcher_argv(python_command("pods.criu"),
                              cgroup_procs=str(_checkpoint_cgroup(daemon.name) / "cgroup.procs"),
                              ns_fd=daemon.init_pidfd, last_pid=last)
    r = subprocess.run(argv, pass_fds=[daemon.init_pidfd], env=child_env(), cwd="/",
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise CheckpointError(f"cannot set the pod's next pid: {r.stderr.strip()}")


def _restored_pids(daemon) -> list[int]:
    ours = _ours(daemon)
    return [p for p in cgroup.pids_in(daemon.name) if p not in ours]


def _restore(daemon, d: Path, meta: dict, ipc_fds: dict, pipes: dict) -> dict[str, int]:
    """The blocking body of ``restore`` (run in a thread). Returns
    {service name: host pid of its restored process}."""
    binary = criu.binary()
    if meta.get("links") and daemon.session is not None:
        try:
            daemon.session.adopt_links(meta["links"])
        except ValueError as e:
            raise CheckpointError(f"the image's link rules: {e}") from None
    with criu.FeatureCache(binary) as kdat:
        _set_last_pid(daemon, int(meta["max_vpid"]))
        null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        progs = _unix_programs(daemon)
        _suspend(daemon, progs)
        # criu moves each task into its pea first, then restores its files
        # from there ("Can't open root: Permission denied" for a pea
        # without "/" r): PeaFS gives every caller of the pod all rights
        # while criu runs. Nothing else runs here yet (before the control
        # socket and the services), and the tasks end stopped
        # (--leave-stopped); a timer that could wake one (SIGCONT) was
        # refused at the checkpoint. Off again before anything is resumed.
        daemon.session.restoring(True)
        try:
            for t in meta["trees"]:
                img = d / t["dir"]
                keep = [null]
                args = ["restore", "-D", "IMG", "-o", "restore.log", "-v4", "-d",
                        "--shell-job", "--leave-stopped", "--file-locks", "--manage-cgroups=soft",
                        "--cgroup-yard", criu.YARD,
                        "--join-ns", "mnt:/proc/1/ns/mnt", "--join-ns", "user:/proc/1/ns/user"]
                for key in t["external"]:
                    args += ["--inherit-fd", f"fd[{null}]:{key}"]
                for ino, service in t["log_pipes"].items():
                    w = pipes[service][1]
                    keep.append(w)
                    args += ["--inherit-fd", f"fd[{w}]:pipe:[{ino}]"]
                ipc = ipc_fds.get(t["ipc_pea"]) if t["ipc_pea"] else None
                # The image directory is the caller's; criu writes its log there.
                rc, secs = _run_criu(daemon, binary, kdat.dir, img, daemon.init_pidfd, ipc, args,
                                     restore=True, keep_fds=keep)
                t["restore_seconds"] = round(secs, 3)
                if rc != 0:
                    raise _criu_failure(img, "restore.log", f"restore of tree {t['dir']}")
            # Every restored task must be in a pea of the policy (criu moved
            # them out of the checkpoint cgroup, where PeaFS grants all).
            for pid in _restored_pids(daemon):
                pea = cgroup.pea_of(pid, daemon.name)
                if pea not in daemon.policy.peas:
                    raise CheckpointError(f"restored process {pid} is in {pea!r}, not in a pea "
                                          f"of the policy")
        finally:
            daemon.session.restoring(False)
            os.close(null)
            problems = _resume(daemon, progs)
            _remove_checkpoint_cgroup(daemon.name)
        if problems:
            raise CheckpointError("could not attach the abstract-Unix programs again: "
                                  + "; ".join(problems))
    # Mediation back before any restored code runs: each process gets the
    # pod's filter with a listener for our supervisor (criu brought the
    # filter back without one: MIGRATION.md 2.9).
    restored = _restored_pids(daemon)
    listeners = []
    try:
        for pid in restored:
            listeners.append(seccomp_rearm.rearm(pid))
    except (OSError, seccomp_rearm.RearmError) as e:
        for fd in listeners:
            os.close(fd)
        raise CheckpointError(f"cannot give restored process {pid} the pod's filter "
                              f"again: {e}") from None
    daemon.restored_listeners = listeners
    adopted = {}
    by_vpid = {procfs.vpid(p): p for p in restored}
    for t in meta["trees"]:
        if t["service"] and t["vpid"] in by_vpid:
            adopted[t["service"]] = by_vpid[t["vpid"]]
    return adopted


def private_copy(directory: str) -> tuple[Path, dict]:
    """A copy of the image in a root-only directory, verified there
    (read_image), and its pod.json. criu reads only this copy: a change
    made to the image after the check cannot reach it, and what criu
    writes during a restore (its log, its statistics) does not change the
    image, which stays restorable."""
    read_image(directory)             # a clear error before any copying
    work = Path(tempfile.mkdtemp(prefix="peapod-restore-", dir=RESTORE_WORK))
    try:
        copy = work / "image"
        shutil.copytree(directory, copy, symlinks=True)
        # The restored tasks open some images themselves (tty-info.img)
        # after they joined the pod's user namespace, where host root's
        # files are "other"'s: the image's directories are searchable by
        # all. The work directory above stays root's alone; criu reaches
        # the copy through a descriptor (/proc/self/fd/N), not through it.
        for sub in [copy, *(p for p in copy.iterdir() if p.is_dir() and not p.is_symlink())]:
            os.chmod(sub, 0o711)
        return read_image(str(copy))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


async def restore(daemon, directory: str) -> dict[str, tuple[int, int]]:
    """Put the image's trees back into this (new, empty) pod; called by the
    daemon after its pod and supervisor are up and before its control
    socket and services. Returns {service: (host pid, log pipe read end)}
    for the services to adopt. CheckpointError if anything failed: the pod
    then stops, and nothing of the image runs. The private copy criu worked
    from is removed, unless the restore failed (its logs are there)."""
    d, meta = await trio.to_thread.run_sync(private_copy, directory)
    try:
        out = await _restore_from(daemon, d, meta)
    except BaseException:
        _discard(d)         # the copy's images go; criu's logs stay for the message
        raise
    shutil.rmtree(d.parent, ignore_errors=True)
    return out


async def _restore_from(daemon, d: Path, meta: dict) -> dict[str, tuple[int, int]]:
    ipc_fds = {}
    for t in meta["trees"]:
        if t.get("ipc_pea"):
            if t["ipc_pea"] not in daemon.policy.peas:
                raise CheckpointError(f"{d}: tree {t['dir']} needs pea {t['ipc_pea']}, which "
                                      f"the policy lacks")
            ipc_fds[t["ipc_pea"]] = await daemon.pea_ipc_ns(t["ipc_pea"])
    pipes = {}
    for t in meta["trees"]:
        for service in t["log_pipes"].values():
            if service not in pipes:
                pipes[service] = os.pipe2(os.O_CLOEXEC)
    try:
        adopted = await trio.to_thread.run_sync(_restore, daemon, d, meta, ipc_fds, pipes)
    except BaseException:
        for r, w in pipes.values():
            os.close(r)
            os.close(w)
        raise
    for listener in daemon.restored_listeners:
        daemon.supervisor.add_listener(listener)
    daemon.restored_listeners = []
    # Our write ends go: the restored processes hold theirs, and a reader
    # must see the end of the output when they exit.
    out = {}
    for service, (r, w) in pipes.items():
        os.close(w)
        if service in adopted:
            out[service] = (adopted[service], r)
        else:
            os.close(r)
    for service, pid in adopted.items():
        if service not in out:
            out[service] = (pid, None)
    for pid in _restored_pids(daemon):
        # Through a pidfd: the number names the process we looked at.
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            signal.pidfd_send_signal(fd, signal.SIGCONT)
        except OSError:
            pass
        finally:
            os.close(fd)
    return out
