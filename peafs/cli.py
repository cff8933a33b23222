"""The `peafs` command: mount, run, umount, audit (README.md, "peafs").

    peafs mount ROOT MOUNTPOINT --policy POLICY [--foreground]
    peafs run MOUNTPOINT --pea PEA [--user UID] [--] CMD...
    peafs umount MOUNTPOINT
    peafs audit MOUNTPOINT [--follow]

Bad input gives one line on stderr and a non-zero status (2 for usage and
policy errors, 1 for failures), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kernel import idmap, jsonline, libc, rundir

from . import runtime
from .audit import AUDIT_NAME, print_log


class Fail(Exception):
    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


# -- mount ---------------------------------------------------------------------

def _load_policy(path: str):
    import rules
    try:
        return rules.load(path)
    except rules.PolicyError as e:
        for problem in getattr(e, "errors", [e]):
            print(problem, file=sys.stderr)
        raise SystemExit(2)
    except OSError as e:
        raise Fail(f"cannot read policy {path}: {e.strerror}", 2)


def cmd_mount(args) -> int:
    policy = _load_policy(args.policy)
    root, mp = Path(args.root), Path(args.mountpoint)
    if not root.is_dir():
        raise Fail(f"root {root} is not a directory", 2)
    if not mp.is_dir():
        raise Fail(f"mount point {mp} is not a directory", 2)
    state_dir = runtime.pod_dir(args.run, policy.name)
    state_dir.mkdir(parents=True, exist_ok=True)
    old = runtime.find_state(args.run, mp)
    if old is not None and runtime.daemon_alive(old[1].get("pid", -1)):
        raise Fail(f"{mp} is already a peafs mount (pod {old[1]['pod']})")
    mine = state_dir / runtime.MOUNT_FILE
    if mine.exists():
        try:
            data = json.loads(mine.read_text())
        except ValueError:
            data = {}
        if runtime.daemon_alive(data.get("pid", -1)):
            raise Fail(f"pod {policy.name} is already mounted at {data.get('mountpoint')}")
    state = {
        "pod": policy.name, "mountpoint": runtime.canonical(mp),
        "root": str(root.resolve()), "policy": str(Path(args.policy).resolve()),
        "uid_map": [list(r) for r in policy.uid_map],
        "gid_map": [list(r) for r in policy.gid_map],
        "peas": sorted(policy.peas), "default_pea": policy.default_pea,
    }
    if args.foreground:
        return _serve(policy, root, mp, state_dir, state, ready_fd=None)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # the daemon
        os.close(r)
        status = 1
        try:
            os.setsid()
            devnull = os.open("/dev/null", os.O_RDWR)
            log = os.open(state_dir / "daemon.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(devnull, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.close(devnull)
            os.close(log)
            status = _serve(policy, root, mp, state_dir, state, ready_fd=w)
        except BaseException as e:  # noqa: BLE001 - reported through the pipe
            try:
                jsonline.write_line(w, {"error": str(e)})
            except OSError:
                pass
        finally:
            os._exit(status)
    os.close(w)
    # One message (kernel/jsonline.py, as `pod start`'s daemon answers):
    # {"ok": true} once mounted, or {"error": why}; nothing if it died.
    answer, _ = jsonline.read_line(r)
    os.close(r)
    if answer is not None and answer.get("ok") is True:
        return 0
    os.waitpid(pid, 0)
    why = answer.get("error") if answer is not None else None
    raise Fail(f"peafs mount: {why or 'the daemon died before mounting'}")


def _serve(policy, root, mp, state_dir, state, ready_fd) -> int:
    import trio
    from .session import PeaFSSession

    # A stop asked between the mount and the loop's signal receiver must
    # not kill the daemon with the default action (a live mount left without
    # its daemon): note it, and act on it once the receiver is open.
    early: list[int] = []
    stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    for sig in stops:
        signal.signal(sig, lambda s, _f: early.append(s))
    session = PeaFSSession(root, mp, policy, state_dir)
    session.mount()
    state["pid"] = os.getpid()
    runtime.write_state(state_dir, state)
    if ready_fd is not None:
        jsonline.write_line(ready_fd, {"ok": True})
        os.close(ready_fd)

    async def main():
        async with trio.open_nursery() as nursery:
            async def on_signal():
                with trio.open_signal_receiver(*stops) as sigs:
                    if early:
                        session.close()
                        return
                    async for _ in sigs:
                        session.close()
                        return
            nursery.start_soon(on_signal)
            await session.serve()
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        try:
            (state_dir / runtime.MOUNT_FILE).unlink()
        except FileNotFoundError:
            pass
    return 0


# -- run -------------------------------------------------------------------------

def cmd_run(args) -> int:
    from kernel import cgroup
    found = runtime.find_state(args.run, args.mountpoint)
    if found is None:
        raise Fail(f"no peafs mount at {args.mountpoint}")
    _state_dir, state = found
    if args.pea not in state["peas"]:
        raise Fail(f"pod {state['pod']} has no pea {args.pea!r}", 2)
    uid = args.user
    gid = args.group if args.group is not None else uid
    if not idmap.is_mapped(state["uid_map"], uid):
        raise Fail(f"uid {uid} is not mapped in pod {state['pod']}", 2)
    if not idmap.is_mapped(state["gid_map"], gid):
        raise Fail(f"gid {gid} is not mapped in pod {state['pod']}", 2)
    cmd = list(args.cmd)
    if not cmd:
        raise Fail("peafs run: no command given", 2)
    mp = state["mountpoint"]

    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)
        try:
            # As host root: drop host groups (no way to set them later,
            # setgroups is denied), join the pea, then leave for the pod's
            # user namespace. CMD inherits the pea at exec: no window runs
            # outside it.
            os.setgroups([])
            cgroup.join(os.getpid(), state["pod"], args.pea)
            libc.unshare(libc.CLONE_NEWUSER)
            os.write(ready_w, b"u")
            if os.read(go_r, 1) != b"g":
                os._exit(127)
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            os.chdir(mp)
            # CMD gets 0-2 only, as a pod process does (pods/startup.py, B7):
            # a descriptor inherited from whoever ran `peafs run` (a
            # directory of the host, say) would reach files beside the
            # mount with no rule asked. What `peafs run` does not do that a
            # pod does: no pod namespaces and no seccomp filter (standalone
            # PeaFS has no supervisor); it is PeaFS's own tool, for file
            # rules (docs/ARCHITECTURE.md, "Commands and runtime state").
            libc.close_all_but({0, 1, 2})
            os.execvp(cmd[0], cmd)
        except BaseException as e:  # noqa: BLE001
            try:
                os.write(2, f"peafs run: {cmd[0]}: {e}\n".encode())
            finally:
                os._exit(127)
    os.close(ready_w)
    os.close(go_r)
    try:
        if os.read(ready_r, 1) != b"u":
            _, status = os.waitpid(pid, 0)
            return _exit_code(status)
        try:
            Path(f"/proc/{pid}/uid_map").write_text(idmap.lines(state["uid_map"]))
            Path(f"/proc/{pid}/setgroups").write_text("deny")
            Path(f"/proc/{pid}/gid_map").write_text(idmap.lines(state["gid_map"]))
        except OSError as e:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise Fail(f"cannot set the id maps of the user namespace: {e.strerror}")
        os.write(go_w, b"g")
    finally:
        os.close(ready_r)
        os.close(go_w)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: os.kill(pid, s))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return _exit_code(status)
        except InterruptedError:
            continue


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


# -- umount ------------------------------------------------------------------------

def cmd_umount(args) -> int:
    from kernel import cgroup
    found = runtime.find_state(args.run, args.mountpoint)
    mounted = runtime.is_mounted(args.mountpoint)
    if found is None and not mounted:
        raise Fail(f"no peafs mount at {args.mountpoint}")
    mp = runtime.canonical(args.mountpoint)
    if mounted:
        r = subprocess.run(["fusermount3", "-u", mp], capture_output=True, timeout=30)
        if r.returncode != 0 and runtime.is_mounted(mp):
            subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True, timeout=30)
        if runtime.is_mounted(mp):
            raise Fail(f"cannot unmount {mp}")
    if found is not None:
        state_dir, state = found
        pid = state.get("pid", -1)
        for sig, wait in ((None, 5.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if not runtime.daemon_alive(pid):
                break
            if sig is not None:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
            deadline = time.monotonic() + wait
            while runtime.daemon_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        try:
            (state_dir / runtime.MOUNT_FILE).unlink()
        except FileNotFoundError:
            pass
        if not cgroup.pids_in(state["pod"]):
            try:
                cgroup.remove_pod(state["pod"])
            except cgroup.CgroupError:
                pass
    return 0


# -- audit ---------------------------------------------------------------------------

def cmd_audit(args) -> int:
    found = runtime.find_state(args.run, args.mountpoint)
    if found is None:
        raise Fail(f"no peafs mount at {args.mountpoint}")
    print_log(found[0] / AUDIT_NAME, args.follow)
    return 0


# -- entry point -----------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peafs", description="PeaFS: pea-checking FUSE file system for pods")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mount", help="mount ROOT at MOUNTPOINT under a policy")
    m.add_argument("root")
    m.add_argument("mountpoint")
    m.add_argument("--policy", required=True)
    m.add_argument("--foreground", action="store_true", help="serve in this process")
    m.set_defaults(func=cmd_mount)
    r = sub.add_parser("run", help="run CMD as a pod user, member of PEA",
                       usage="peafs run MOUNTPOINT --pea PEA [--user UID] [--group GID] [--] CMD...")
    r.add_argument("mountpoint")
    r.add_argument("--pea", required=True)
    r.add_argument("--user", type=int, default=0, help="pod uid (default 0)")
    r.add_argument("--group", type=int, default=None, help="pod gid (default: the uid)")
    r.set_defaults(cmd=[])
    r.set_defaults(func=cmd_run)
    u = sub.add_parser("umount", help="unmount (also a mount whose daemon died)")
    u.add_argument("mountpoint")
    u.set_defaults(func=cmd_umount)
    a = sub.add_parser("audit", help="print the refusals, one JSON object per line")
    a.add_argument("mountpoint")
    a.add_argument("--follow", action="store_true")
    a.set_defaults(func=cmd_audit)
    return p


_RUN_VALUE_OPTIONS = ("--pea", "--user", "--group")


def _split_run(argv: list[str]) -> list[str]:
    """`peafs run MP [opts] CMD ARGS...`: everything from the first word
    after MOUNTPOINT that is not an option of ours belongs to CMD, so CMD's
    own options need no "--". Returns argv with a "--" put before CMD."""
    if "--" in argv:
        return argv
    out, i, positionals = [], 1, 0
    while i < len(argv):
        a = argv[i]
        if a in _RUN_VALUE_OPTIONS:
            out += argv[i:i + 2]
            i += 2
        elif a.startswith("-") and (a.split("=")[0] in _RUN_VALUE_OPTIONS or a in ("-h", "--help")):
            out.append(a)
            i += 1
        elif positionals == 0:
            out.append(a)
            positionals = 1
            i += 1
        else:
            return [argv[0]] + out + ["--"] + argv[i:]
    return [argv[0]] + out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = None
    if argv and argv[0] == "run":
        argv = _split_run(argv)
        if "--" in argv:
            i = argv.index("--")
            argv, cmd = argv[:i], argv[i + 1:]
    args = parser().parse_args(argv)
    if cmd is not None:
        args.cmd = cmd
    args.run = rundir.run_dir_from(os.environ)   # the one read of $PEAPOD_RUN
    try:
        return args.func(args)
    except Fail as e:
        print(f"peafs: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return 130
    except subprocess.TimeoutExpired as e:
        print(f"peafs: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
