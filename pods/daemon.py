"""The per-pod daemon: owns one pod from `pod start` to `pod stop`.

``pods.daemon --policy FILE --run-dir DIR --ready-fd N --lock-fd N`` is
started by `pod start` (pods/lifecycle_cmd.py, with
startup.python_command) in a new session. It holds the pod's
lock for its whole life (liveness = the flock, see pods/runtime.py) and:

1. enters its own mount namespace (slave of the host's: host unmounts reach
   it, its mounts never reach the host);
2. creates the pea cgroups and the limit cgroups (pods/limits.py);
3. binds the policy's host directories into the staging tree (read-only
   unless rw) and mounts PeaFS on $PEAPOD_RUN/pods/NAME/mnt;
4. starts the pod: answers the keeper's handshake by writing the id maps
   (only host root may map ranges), moving it into the default pea and
   adding the veth; keeps a pidfd of the pod's pid 1;
   (steps 1-4 are written, in order with the keeper's, in pods/startup.py)
5. serves, in one trio nursery: PeaFS, the seccomp-notify supervisor
   (pods/supervisor.py, when present) and the control socket
   (pods/control.py); each `pod exec` is a request to the tagger, the
   pod's fork server (pods/tagger.py), which forks a monitor for it;
6. starts the policy's services (pods/services.py) through the tagger and
   tells `pod start` {"ok": true} through the ready pipe once they run (or
   {"error": ...}, what stopped one: jsonline.write_line);
7. when pid 1 ends or `pod stop` asks: TERM to pid 1 (which forwards it to
   every pod process), SIGKILL through cgroup.kill after the timeout, then
   unmounts, removes cgroups, the veth and every runtime file, and exits.

The daemon never forks to run Python: children are started with
subprocess (fork+exec). The keeper and the tagger are started from the trio
thread, which lives as long as the daemon, so PR_SET_PDEATHSIG in them
fires exactly when the daemon dies (it fires when the parent *thread*
ends). No fork of the daemon happens per `pod exec`: the tagger, a small
single-threaded process, forks the monitors; the daemon hands it the
request and follows the monitor through the pidfd the monitor sends. A
tagger that dies is replaced (``_watch_tagger``, and ``ensure_tagger``
before each request); a request it never forked for is sent again once.
It never touches the PeaFS mount itself (it serves it: a synchronous access
from this thread would deadlock).
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import trio

import rules
from kernel import cgroup, idmap, jsonline
from kernel.pidfd import process_exited
from pods import control, limits, netbpf, netns, podusers, runtime, services, startup
from pods import namespaces as ns
# The order of the privileged steps, the keeper's handshake and how Python
# children are started: pods/startup.py.
from pods.startup import StartError, child_env, python_command

# No fallback: a pod never runs without its supervisor (fail closed).
from pods.supervisor import Supervisor


class PodDaemon:
    def __init__(self, policy, run: runtime.RunDir, *, stop_timeout: float = 5.0):
        self.policy = policy
        self.name = policy.name
        self.run = run                       # $PEAPOD_RUN, given as --run-dir
        self.dir = run.pod_dir(self.name)
        self.mnt = self.dir / "mnt"
        self.stop_timeout = stop_timeout
        self.session = None  # PeaFSSession
        self.supervisor = None
        self.keeper: subprocess.Popen | None = None
        # The tagger: the pod's fork server (pods/tagger.py), its socket (a
        # trio socket) and pidfd; restarted under the lock if it dies.
        self.tagger: subprocess.Popen | None = None
        self.tagger_sock = None
        self.tagger_pidfd: int | None = None
        self._tagger_lock = trio.Lock()
        self.init_pid: int | None = None
        self.init_pidfd: int | None = None
        self.ipc_ns: dict[str, int] = {}          # pea -> fd of its IPC namespace
        self.net_queue: int | None = None          # BPF queue of network refusals
        self.unix_names: int | None = None         # BPF map: abstract Unix name -> pea
        self.net_progs: dict[str, dict[str, int]] = {}   # pea -> {hook: program fd}
        self.kfunc_ids: dict = {}
        self.pea_order: list[str] = []             # pea index in those records -> name
        self._ipc_lock = trio.Lock()
        self._reload_lock = trio.Lock()
        self.veth: str | None = None
        self.stop_event: trio.Event | None = None
        self.active_execs = 0
        self.state: dict = {}
        self.cgroup_files: dict[str, list[str]] = {}
        self.services: services.ServiceManager | None = None
        self.service_log: services.ServiceLog | None = None
        self.restore_dir: str | None = None        # `pod restore`: the image to put back
        self.checkpoint_stops = False              # `pod checkpoint` is stopping the pod
        self.restored_listeners: list[int] = []

    def attach_net_rules(self) -> None:
        """Each pea's bind/connect rules, and the host's addresses refused
        unless [pod.net] host = true, as BPF programs on its cgroup
        (pods/netbpf.py); refusals queue up in self.net_queue. Step A4d of
        pods/startup.py."""
        net = self.policy.net
        hosts = netns.host_addresses() if net is not None and not net.host else []
        self.net_queue = netbpf.create_queue()
        self.unix_names = netbpf.create_unix_names()
        ids = netbpf.unix_kfunc_ids()
        self.kfunc_ids = ids
        self.pea_order = list(self.policy.peas)
        for i, name in enumerate(self.pea_order):
            self.net_progs[name] = self._attach_pea_net(name, i, self.policy.peas[name], hosts)

    def _attach_pea_net(self, name: str, index: int, pea, hosts) -> dict[str, int]:
        return netbpf.attach_pea(str(cgroup.pea_cgroup(self.name, name)),
                                 netbpf.PeaNet(index, pea.connect, pea.bind, pea.complain),
                                 hosts, self.net_queue, self.unix_names, self.kfunc_ids,
                                 keep=True)

    def _log_net_refusals(self) -> None:
        """Move the kernel's refusal records into the audit log."""
        if self.net_queue is None:
            return
        audit = self.session.audit if self.session is not None else None
        for r in netbpf.drain(self.net_queue):
            if audit is None or r.pea_index >= len(self.pea_order):
                continue
            name = self.pea_order[r.pea_index]
            if r.address.startswith("@"):
                rule = "abstract Unix name of another pea"
            elif r.op == "bind":
                rule = "bind"
            elif name in self.policy.peas and self.policy.peas[name].connect:
                rule = "[pod.net] host = false"
            else:
                rule = "connect = false"
            audit.refusal(pea=name, pid=r.tgid, uid=idmap.to_pod(self.policy.uid_map, r.uid),
                          operation=r.op, path=r.address, need="", rule=rule, kind="net",
                          complain=r.complain)

    async def _net_audit(self) -> None:
        # A BPF queue map cannot be polled: drain it a few times a second.
        try:
            while True:
                await trio.sleep(0.2)
                self._log_net_refusals()
        finally:
            self._log_net_refusals()

    # ------------------------------------------------------------------ exec

    def check_exec(self, pea: str | None, uid: int | None,
                   gid: int | None = None) -> tuple[str, int, int]:
        pea = pea or self.policy.default_pea
        if pea not in self.policy.peas:
            raise ValueError(f"pod {self.name} has no pea {pea!r}")
        uid = 0 if uid is None else int(uid)
        if not idmap.is_mapped(self.policy.uid_map, uid):
            raise ValueError(f"uid {uid} is not mapped in pod {self.name}")
        if gid is not None:  # `pod exec --user NAME`: the group of NAME's passwd line
            gid = int(gid)
            if not idmap.is_mapped(self.policy.gid_map, gid):
                raise ValueError(f"gid {gid} is not mapped in pod {self.name}")
            return pea, uid, gid
        gid = uid if idmap.is_mapped(self.policy.gid_map, uid) else self.policy.gid_map[0].inside
        return pea, uid, gid

    def _new_ipc_ns(self) -> int:
        """A new IPC namespace owned by the pod's user namespace (pods/peaipc.py)."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with mine:
            try:
                proc = subprocess.Popen(
                    python_command("pods.peaipc", "--sock", str(theirs.fileno()),
                                   "--pidfd", str(self.init_pidfd)),
                    pass_fds=[theirs.fileno(), self.init_pidfd], env=child_env(),
                    stdin=subprocess.DEVNULL, cwd="/")
            finally:
                theirs.close()
            mine.settimeout(30)
            try:
                msg, fds = control.recv_msg(mine)
            finally:
                proc.wait(timeout=30)
        if not msg or not msg.get("ok") or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise OSError(errno.EIO, (msg or {}).get("error", "IPC namespace: the helper died"))
        return fds[0]

    async def pea_ipc_ns(self, pea: str) -> int:
        """The fd of ``pea``'s IPC namespace, made on its first use."""
        async with self._ipc_lock:
            fd = self.ipc_ns.get(pea)
            if fd is None:
                fd = await trio.to_thread.run_sync(self._new_ipc_ns)
                self.ipc_ns[pea] = fd
            return fd

    async def ensure_tagger(self) -> None:
        """Restart the tagger if it died (StartError if it cannot start)."""
        async with self._tagger_lock:
            if self.tagger is not None and self.tagger.poll() is None:
                return
            if self.stopping:
                raise StartError("the pod is stopping")
            old = self.tagger
            print(f"pods.daemon: the tagger (pid {old.pid if old else '?'}) ended "
                  f"({old.poll() if old else '?'}); starting another", file=sys.stderr)
            await startup.restart_tagger(self)
            self.state["tagger_pid"] = self.tagger.pid
            self.run.write_state(self.name, self.state)

    async def _watch_tagger(self) -> None:
        """A tagger that dies is replaced at once, not at the next exec."""
        while not self.stopping:
            pidfd = self.tagger_pidfd
            if pidfd is None:
                return
            try:
                await trio.lowlevel.wait_readable(pidfd)
            except trio.ClosedResourceError:
                continue         # replaced meanwhile
            if self.stopping:
                return
            try:
                await self.ensure_tagger()
            except StartError as e:
                print(f"pods.daemon: the tagger cannot start again: {e}", file=sys.stderr)
                return

    async def _send_to_tagger(self, req: dict, fds: list[int]) -> tuple | dict:
        """Hand one request to the tagger (step B0): (the daemon's end of the
        new monitor's socket, the monitor's pidfd) once the monitor said
        {"monitor"}, or the final message. A tagger that
        died before it forked the monitor is restarted and asked again, once:
        no monitor of the first request ever ran (its first message is
        "monitor", before anything of the pod)."""
        for attempt in (1, 2):
            try:
                await self.ensure_tagger()
            except StartError as e:
                return {"error": f"the tagger cannot start: {e}", "status": 126}
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                await control.asend_msg(self.tagger_sock, req,
                                        [*fds[:3], theirs.fileno(), *fds[3:]])
            except OSError:
                mine.close()
                continue          # it died: restart (ensure_tagger) and again
            finally:
                theirs.close()
            tsock = trio.socket.from_stdlib_socket(mine)
            msg, got = await control.arecv_msg(tsock)
            if msg is not None and "monitor" in msg and len(got) == 1:
                return tsock, got[0]
            for fd in got:
                os.close(fd)
            tsock.close()
            if msg is not None and "error" in msg:
                return msg
            if attempt == 1 and (self.tagger is None or self.tagger.poll() is not None):
                continue
            break
        return {"error": "the tagger died before it started the command", "status": 126}

    async def run_tagger(self, argv, pea, uid, gid, stdio, *, tty=False, winsize=None,
                         term="", client=None, on_spawned=None, on_started=None) -> dict:
        """Have the tagger fork a monitor for argv (pods/tagger.py), relay its
        messages; return the final one ({"exit": ...} or {"error": ...}).
        ``on_spawned()`` runs once the monitor holds its copies of ``stdio``
        (or none ever will), ``on_started(msg)`` when the program runs
        (pods/services.py)."""
        try:
            try:
                ipc = await self.pea_ipc_ns(pea)
            except OSError as e:
                return {"error": f"pea {pea}: {e.strerror or e}", "status": 126}
            rows, cols = ((winsize or (0, 0))[:2]) if tty else (0, 0)
            req = {"op": "spawn", "argv": list(argv), "uid": int(uid), "gid": int(gid),
                   "cgroup": list(self.cgroup_files[pea]),
                   "notify": self.supervisor is not None, "pty": bool(tty),
                   "rows": int(rows or 0), "cols": int(cols or 0),
                   "term": str(term or "") if tty else "", "ipcns": True}
            got = await self._send_to_tagger(req, [*stdio, self.init_pidfd, ipc])
        finally:
            if on_spawned is not None:
                on_spawned()
        if isinstance(got, dict):
            return got
        tsock, monitor_pidfd = got
        final: dict = {"error": "the tagger's monitor died", "status": 126}
        try:
            async with trio.open_nursery() as nursery:
                if client is not None:
                    nursery.start_soon(self._client_to_tagger, client, tsock)
                while True:
                    msg, fds = await control.arecv_msg(tsock)
                    if msg is None:
                        break
                    if msg.get("listener"):
                        ok = self._add_listener(fds)
                        await control.asend_msg(tsock, {"ok": ok})
                        continue
                    for fd in fds:
                        os.close(fd)
                    if "started" in msg:
                        if on_started is not None:
                            on_started(msg)
                        if client is not None:
                            await control.asend_msg(client, msg)
                        continue
                    if "exit" in msg or "error" in msg:
                        final = msg
                        break
                nursery.cancel_scope.cancel()
        finally:
            tsock.close()
            # The monitor is the tagger's child (the tagger reaps it): its
            # pidfd says when it is gone.
            try:
                await trio.lowlevel.wait_readable(monitor_pidfd)
            finally:
                os.close(monitor_pidfd)
        return final

    def _add_listener(self, fds: list[int]) -> bool:
        if not fds:
            return False
        if self.supervisor is None:
            # No supervisor: nobody would answer the notifications, so
            # mediated calls would hang. Refuse to start the command.
            for fd in fds:
                os.close(fd)
            return False
        for fd in fds[1:]:
            os.close(fd)
        self.supervisor.add_listener(fds[0])
        return True

    async def _client_to_tagger(self, client, tsock) -> None:
        while True:
            try:
                msg, fds = await control.arecv_msg(client)
            except OSError:
                return
            for fd in fds:
                os.close(fd)
            if msg is None:
                return
            if msg.get("op") == "signal":
                await control.asend_msg(tsock, {"signal": int(msg.get("sig", 15))})
            elif msg.get("op") == "winsize":
                await control.asend_msg(tsock, {"winsize": [int(msg["rows"]), int(msg["cols"])]})

    async def handle_client(self, conn) -> None:
        fds: list[int] = []
        try:
            msg, fds = await control.arecv_msg(conn)
            if msg is None:
                return
            op = msg.get("op")
            if op == "ping":
                await control.asend_msg(conn, {"ok": True, "name": self.name,
                                               "init_pid": self.init_pid})
            elif op == "stop":
                self.stop_timeout = float(msg.get("timeout", self.stop_timeout))
                await control.asend_msg(conn, {"ok": True})
                self.stop_event.set()
            elif op == "exec":
                await self._exec(conn, msg, fds)
            elif op == "status":
                await control.asend_msg(conn, self.status())
            elif op == "reload":
                async with self._reload_lock:
                    await control.asend_msg(conn, await self.reload(msg.get("policy")))
            elif op == "checkpoint":
                # Under the reload lock: a reload swaps the peas' programs,
                # which a checkpoint detaches and attaches again.
                async with self._reload_lock:
                    await control.asend_msg(conn, await self._checkpoint(msg))
            else:
                await control.asend_msg(conn, {"error": f"unknown op {op!r}", "status": 2})
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            conn.close()

    # ------------------------------------------------------------ reload

    # What a reload may not change: the pod's namespaces, mounts, limits and
    # services were made from them at start.
    FIXED = (("name", "the pod's name"), ("hostname", "hostname"), ("root", "root"),
             ("uid_map", "uid_map"), ("gid_map", "gid_map"), ("default_pea", "default_pea"),
             ("mounts", "[[pod.mount]]"), ("net", "[pod.net]"), ("limits", "[pod.limits]"),
             ("services", "init and [[pod.service]]"))

    async def reload(self, path) -> dict:
        """`pod rules reload`: apply a changed policy to the running pod.

        The pea rules, complain flags, transitions and network rules change
        for every later decision; processes keep their pea. In order: the
        kernel's programs (each pea's new programs attached before its old
        ones go, so a pea is never without rules), new peas' cgroups, then
        PeaFS's policy in one step on its own loop (``swap_policy``)."""
        path = str(path or self.state.get("policy", ""))
        try:
            new = await trio.to_thread.run_sync(rules.load, path)
        except rules.PolicyError as e:
            return {"error": str(e), "status": 2}
        except OSError as e:
            return {"error": f"{path}: {e.strerror}", "status": 2}
        old = self.policy
        for attr, what in self.FIXED:
            if getattr(new, attr) != getattr(old, attr):
                return {"error": f"reload cannot change {what}: stop and start the pod for "
                                 f"that", "status": 2}
        missing = new.unaccepted_gaps()
        if missing:
            return {"error": f"the new policy has {len(new.peas)} peas and does not accept "
                             f"the known gaps {', '.join(missing)} (docs/SECURITY.md): add "
                             f"them to [pod] accept_gaps", "status": 2}
        removed = [p for p in old.peas if p not in new.peas]
        for pea in removed:
            pids = cgroup.pids_in(self.name, pea)
            if pids:
                return {"error": f"pea {pea} still has {len(pids)} process(es): stop them "
                                 f"before a policy without it is loaded", "status": 2}
        added = [p for p in new.peas if p not in old.peas]
        try:
            await trio.to_thread.run_sync(self._reload_kernel, new, added, removed)
        except (OSError, cgroup.CgroupError) as e:
            return {"error": f"network rules of the new policy: {e}", "status": 1}
        if self.session is not None and self.session.ops is not None:
            import pyfuse3

            def swap():
                trio.from_thread.run_sync(self.session.swap_policy, new,
                                          trio_token=pyfuse3.trio_token)
            await trio.to_thread.run_sync(swap)
        self.policy = new
        if self.supervisor is not None:
            self.supervisor.policy = new
            self.supervisor.pea_index = {p: i for i, p in enumerate(self.pea_order)
                                         if p in new.peas}
        self.state["peas"] = list(new.peas)
        self.run.write_state(self.name, self.state)
        changed = [p for p in new.peas if p in old.peas and
                   (new.peas[p].complain, new.peas[p].connect, new.peas[p].bind)
                   != (old.peas[p].complain, old.peas[p].connect, old.peas[p].bind)]
        return {"ok": True, "policy": path, "added": added, "removed": removed,
                "network_changed": changed}

    def _reload_kernel(self, new, added: list[str], removed: list[str]) -> None:
        """Each pea's network programs replaced, new peas' cgroups made."""
        net = new.net
        hosts = netns.host_addresses() if net is not None and not net.host else []
        cgroup.ensure_peas(self.name, added)
        v1 = [str(d / "cgroup.procs") for d in limits.v1_dirs(self.name)]
        for pea in added:
            # An index of its own, never reused: records in the queue and
            # names in the Unix-name map carry indices.
            self.pea_order.append(pea)
            self.cgroup_files[pea] = [str(cgroup.pea_cgroup(self.name, pea) / "cgroup.procs"),
                                      *v1]
        for pea in new.peas:
            index = self.pea_order.index(pea)
            fresh = self._attach_pea_net(pea, index, new.peas[pea], hosts)
            old = self.net_progs.pop(pea, None)
            self.net_progs[pea] = fresh
            if old:
                netbpf.detach(str(cgroup.pea_cgroup(self.name, pea)), old)
        for pea in removed:
            old = self.net_progs.pop(pea, None)
            if old:
                netbpf.detach(str(cgroup.pea_cgroup(self.name, pea)), old)
            self.cgroup_files.pop(pea, None)

    async def _checkpoint(self, msg) -> dict:
        from pods import checkpoint
        from pods.criu import CriuError

        if self.state.get("state") != "running":
            return {"error": f"pod {self.name} is {self.state.get('state')}", "status": 2}
        try:
            return await checkpoint.checkpoint(self, str(msg.get("dir")),
                                               bool(msg.get("leave_running")))
        except (checkpoint.CheckpointError, CriuError) as e:
            return {"error": str(e), "status": 1}
        except OSError as e:
            return {"error": f"checkpoint: {e}", "status": 1}

    def status(self) -> dict:
        return {"ok": True, "name": self.name, "daemon_pid": os.getpid(),
                "state": self.state.get("state"), "started": self.state.get("started"),
                "init_pid": self.init_pid, "peas": list(self.policy.peas),
                "services": self.services.status() if self.services is not None else []}

    async def _exec(self, conn, msg, fds) -> None:
        self.active_execs += 1
        try:
            await self._exec_inner(conn, msg, fds)
        finally:
            self.active_execs -= 1

    async def _exec_inner(self, conn, msg, fds) -> None:
        argv = msg.get("argv")
        if (not isinstance(argv, list) or not argv
                or not all(isinstance(a, str) for a in argv) or len(fds) != 3):
            await control.asend_msg(conn, {"error": "exec needs argv and 3 fds", "status": 2})
            return
        try:
            pea, uid, gid = self.check_exec(msg.get("pea"), msg.get("uid"), msg.get("gid"))
        except (ValueError, TypeError) as e:
            await control.asend_msg(conn, {"error": str(e), "status": 2})
            return
        final = await self.run_tagger(argv, pea, uid, gid, fds, tty=bool(msg.get("tty")),
                                      winsize=msg.get("winsize"), term=msg.get("term", ""),
                                      client=conn)
        await control.asend_msg(conn, final)

    @property
    def stopping(self) -> bool:
        return self.checkpoint_stops or (self.stop_event is not None and self.stop_event.is_set())

    def resolve_user(self, user) -> tuple[int, int]:
        """(uid, gid) in the pod of a service's ``user``: a pod uid, or a
        name from the pod's /etc/passwd (pods/podusers.py)."""
        if isinstance(user, int):
            _, uid, gid = self.check_exec(self.policy.default_pea, user)
        else:   # check_exec refuses ids the pod does not map
            _, uid, gid = self.check_exec(self.policy.default_pea,
                                          *podusers.lookup(self.policy.root, user))
        return uid, gid

    # ----------------------------------------------------------------- serve

    async def serve(self, ready_fd: int) -> None:
        self.stop_event = trio.Event()
        listener = None
        try:
            async with trio.open_nursery() as nursery:
                if self.session is not None:
                    # PeaFS serves from a thread and trio loop of its own:
                    # nothing on this loop (the supervisor copying a
                    # caller's memory, which may fault into PeaFS; a
                    # subprocess; a slow client) can make the file system
                    # wait on itself.
                    token = trio.lowlevel.current_trio_token()

                    def fs_ended(exc):
                        if exc is not None:
                            traceback.print_exception(exc)
                        try:
                            trio.from_thread.run_sync(self.stop_event.set, trio_token=token)
                        except trio.RunFinishedError:
                            pass
                    self.session.serve_in_thread(fs_ended)
                await startup.start_pod(self)     # steps A2-A7
                self.supervisor = Supervisor(
                    self.name, self.policy,
                    settle=self.session.settle if self.session else None,
                    pending=self.session.pending_transition if self.session else None)
                self.supervisor.procs.init_tgid = self.init_pid
                self.supervisor.unix_names = self.unix_names
                self.supervisor.pea_index = {p: i for i, p in enumerate(self.pea_order)}
                if self.session is not None:
                    self.session.set_transition_guard(self.supervisor.transition_guard)
                nursery.start_soon(self.supervisor.serve)
                adopted = {}
                if self.restore_dir is not None:
                    # Before the control socket: no `pod exec` may take a
                    # pid the image needs (pods/checkpoint.py).
                    from pods import checkpoint
                    from pods.criu import CriuError
                    try:
                        adopted = await checkpoint.restore(self, self.restore_dir)
                    except (checkpoint.CheckpointError, CriuError) as e:
                        raise StartError(f"restore from {self.restore_dir}: {e}") from None
                listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                path = self.dir / "control"
                await listener.bind(str(path))
                os.chmod(path, 0o600)
                listener.listen(64)
                nursery.start_soon(self._accept, listener, nursery)
                self.state.update(init_pid=self.init_pid, keeper_pid=self.keeper.pid,
                                  tagger_pid=self.tagger.pid, veth=self.veth)
                self.run.write_state(self.name, self.state)
                nursery.start_soon(self._watch_init)
                nursery.start_soon(self._watch_tagger)
                nursery.start_soon(self._net_audit)
                nursery.start_soon(self._watch_signals)
                # `pod start` succeeds only once the services run (honest start).
                self.services = services.ServiceManager(self, self.policy.services,
                                                        self.service_log)
                try:
                    await self.services.start(nursery, adopted)
                except RuntimeError as e:
                    raise StartError(str(e)) from None
                if self.stopping:
                    raise StartError("stopped while its services started")
                self.state["state"] = "running"
                self.run.write_state(self.name, self.state)
                _report(ready_fd, {"ok": True})
                ready_fd = -1
                await self.stop_event.wait()
                self.state["state"] = "stopping"
                self.run.write_state(self.name, self.state)
                await self.stop_processes()
                # Let `pod exec` callers hear how their command ended.
                with trio.move_on_after(2):
                    while self.active_execs:
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
        except BaseException as group:
            e = _leaf(group)
            if ready_fd >= 0:
                msg = str(e) if isinstance(e, StartError) else f"{type(e).__name__}: {e}"
                if isinstance(e, trio.TooSlowError):
                    msg = "pod setup timed out"
                _report(ready_fd, {"error": msg})
                ready_fd = -1
            if not isinstance(e, (StartError, trio.TooSlowError, trio.Cancelled)):
                traceback.print_exception(group)
            await self.stop_processes()
        finally:
            if listener is not None:
                listener.close()

    async def _accept(self, listener, nursery) -> None:
        while True:
            conn, _ = await listener.accept()
            nursery.start_soon(self.handle_client, conn)

    async def _watch_signals(self) -> None:
        # `kill DAEMON` (TERM, INT, HUP) means an orderly `pod stop`.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for _ in sigs:
                self.stop_event.set()

    async def _watch_init(self) -> None:
        await trio.lowlevel.wait_readable(self.init_pidfd)
        self.stop_event.set()

    async def stop_processes(self) -> None:
        """TERM to pid 1, which forwards it; SIGKILL to all after the timeout."""
        if self.init_pidfd is not None:
            try:
                signal.pidfd_send_signal(self.init_pidfd, signal.SIGTERM)
            except OSError:
                pass
            # Polled, not trio's wait_readable: _watch_init already waits on
            # this fd, and trio allows one waiter per fd (BusyResourceError,
            # which used to cancel the nursery, PeaFS with it, before the
            # pod's processes could finish their shutdown).
            with trio.move_on_after(self.stop_timeout):
                while not process_exited(self.init_pidfd):
                    await trio.sleep(0.02)
        limits.kill_all(self.name)
        if self.keeper is not None:
            with trio.move_on_after(self.stop_timeout):
                while self.keeper.poll() is None:
                    await trio.sleep(0.02)
            if self.keeper.poll() is None:
                self.keeper.kill()
                self.keeper.wait()
        startup.stop_tagger(self)     # its monitors end with their pod processes
        with trio.move_on_after(10):
            while cgroup.pids_in(self.name) or limits.v1_pids(self.name):
                limits.kill_all(self.name)
                await trio.sleep(0.02)

    # --------------------------------------------------------------- cleanup

    def cleanup(self) -> None:
        """Everything the pod left: mounts, cgroups, veth, runtime files."""
        startup.stop_tagger(self)
        for fd in self.ipc_ns.values():
            os.close(fd)
        self.ipc_ns.clear()
        for fd in self.restored_listeners:
            os.close(fd)
        self.restored_listeners.clear()
        if self.net_queue is not None:
            os.close(self.net_queue)
            self.net_queue = None
        if self.unix_names is not None:
            os.close(self.unix_names)
            self.unix_names = None
        for progs in self.net_progs.values():
            for fd in progs.values():
                os.close(fd)
        self.net_progs.clear()
        if self.service_log is not None:
            self.service_log.close()
        if self.session is not None:
            try:
                self.session.close()
            except Exception:  # noqa: BLE001
                traceback.print_exc()
        try:
            ns.umount2(str(self.mnt), ns.MNT_DETACH)
        except OSError:
            pass
        cleanup_leftovers(self.run, self.name)


def cleanup_leftovers(run: runtime.RunDir, name: str) -> list[str]:
    """Remove what a pod of this name may have left (also used by `pod stop`
    and `pod start` for a pod whose daemon died). Returns problems."""
    problems = []
    limits.kill_all(name)
    deadline = time.monotonic() + 5
    while (cgroup.pids_in(name) or limits.v1_pids(name)) and time.monotonic() < deadline:
        limits.kill_all(name)
        time.sleep(0.02)
    for what, fn in (("cgroups", lambda: cgroup.remove_pod(name)),
                     ("limit cgroups", lambda: limits.remove(name)),
                     ("veth", lambda: netns.del_veth(name))):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            problems.append(f"{what}: {getattr(e, 'strerror', None) or e}")
    d = run.pod_dir(name)
    mnt = d / "mnt"
    if os.path.ismount(mnt):  # only if someone mounted it in our namespace
        try:
            ns.umount2(str(mnt), ns.MNT_DETACH)
        except OSError:
            pass
    shutil.rmtree(d, ignore_errors=True)
    return problems


def _leaf(e: BaseException) -> BaseException:
    """The first real exception inside (nested) exception groups."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


def _report(fd: int, msg: dict) -> None:
    """The one message of the ready pipe to `pod start`."""
    try:
        jsonline.write_line(fd, msg)
        os.close(fd)
    except OSError:
        pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="pods.daemon")
    p.add_argument("--policy", required=True)
    p.add_argument("--run-dir", required=True, help="$PEAPOD_RUN of the `pod start` that "
                   "started us (the daemon's environment does not carry it)")
    p.add_argument("--ready-fd", type=int, required=True)
    p.add_argument("--lock-fd", type=int, required=True)
    p.add_argument("--restore", metavar="DIR", help="`pod restore`: put this checkpoint's "
                   "processes back before the services start")
    args = p.parse_args(argv)
    os.set_inheritable(args.lock_fd, False)
    os.set_inheritable(args.ready_fd, False)
    try:
        policy = rules.load(args.policy)
    except rules.PolicyError as e:
        _report(args.ready_fd, {"error": str(e)})
        return 2
    run = runtime.RunDir(args.run_dir)
    daemon = PodDaemon(policy, run)
    daemon.restore_dir = args.restore
    daemon.state = {"name": policy.name, "policy": str(Path(args.policy).resolve()),
                    "root": str(policy.root), "daemon_pid": os.getpid(),
                    "uid_map": [list(r) for r in policy.uid_map],
                    "gid_map": [list(r) for r in policy.gid_map],
                    "peas": list(policy.peas), "default_pea": policy.default_pea,
                    "services": [sv.name for sv in policy.services],
                    "started": time.time(), "state": "starting",
                    "net": ({"ip": policy.net.ip, "host_ip": policy.net.host_ip,
                             "prefixlen": policy.net.prefixlen} if policy.net else None)}
    run.write_state(policy.name, daemon.state)
    code = 0
    try:
        startup.host_setup(daemon)           # step A1, before trio
        trio.run(daemon.serve, args.ready_fd)
    except StartError as e:
        _report(args.ready_fd, {"error": str(e)})
        code = 1
    except BaseException as e:  # noqa: BLE001
        _report(args.ready_fd, {"error": f"{type(e).__name__}: {e}"})
        traceback.print_exc()
        code = 1
    finally:
        daemon.cleanup()
    return code


if __name__ == "__main__":
    sys.exit(main())
