"""The pod's services: started, watched, restarted, and their output kept.

A service ([[pod.service]] in the policy, or the ``init`` shorthand) is a
program the daemon starts through the tagger like any `pod exec`: same
pea, user and seccomp treatment. What this module adds:

- **An honest start.** `pod start` hears "ok" only once every service has
  started and none has failed during START_GRACE seconds after (an exec
  that fails, a program that exits non-zero at once). A program that exits
  0 at once is a success (a launcher that daemonizes, a one-shot set-up).
- **Restarts**: "no", "on-failure" (a non-zero exit, a signal, a failed
  exec) or "always", after RESTART_FIRST seconds, doubled on each failure
  in a row up to RESTART_MAX; a run that lasted RESTART_RESET seconds counts
  as healthy and resets the delay. Never while the pod stops.
- **Logs** (``ServiceLog``): each service's stdout and stderr go to a pipe
  the daemon reads, one JSON object per line in ROOT.peapod/services.log
  (beside the audit log, out of the pod's reach, kept after `pod stop`),
  with the daemon's own events (started, exited, restarting). The daemon
  writes the file, not the service: a service cannot fill the disk past
  LOG_MAX (the file is rotated to services.log.1, one generation), write
  in another service's name, or forge an event line.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import trio

from kernel import procfs
from pods.runtime import SERVICE_LOG_MAX as LOG_MAX

LINE_MAX = 4096             # a longer line is cut into pieces of this size
START_GRACE = 0.5           # seconds a service must survive for `pod start` to succeed
RESTART_FIRST = 1.0
RESTART_MAX = 30.0
RESTART_RESET = 60.0


class ServiceLog:
    """ROOT.peapod/services.log: one JSON object per line,
    ``{"t": unix time, "service": name, "line": text}`` for output and
    ``{"t", "service", "event": text}`` for what the daemon did."""

    def __init__(self, path: Path, max_bytes: int = LOG_MAX):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.fd = -1
        self._open()

    def _open(self) -> None:
        # O_NOFOLLOW: ROOT.peapod is host root's (0700), but the log must
        # never be a link planted to make the daemon append elsewhere.
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self.fd).st_size

    def _write(self, rec: dict) -> None:
        data = (json.dumps(rec, ensure_ascii=False) + "\n").encode()
        if self.size and self.size + len(data) > self.max_bytes:
            os.close(self.fd)
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self._open()
        try:
            os.write(self.fd, data)
            self.size += len(data)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise   # a full disk loses log lines, never the pod

    def line(self, service: str, text: str) -> None:
        self._write({"t": round(time.time(), 3), "service": service, "line": text})

    def event(self, service: str, text: str) -> None:
        self._write({"t": round(time.time(), 3), "service": service, "event": text})

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def describe_end(final: dict, program: str) -> tuple[str, bool]:
    """How a run of ``program`` ended, in words, and whether it failed."""
    if "error" in final:
        return f"cannot start {program}: {final['error']}", True
    if final.get("restored"):
        # Its status went to the pod's pid 1 (pods/checkpoint.py).
        return "the restored process ended (status unknown)", True
    if final.get("signal"):
        return f"killed by signal {final['signal']}", True
    code = final.get("exit")
    return f"exited with status {code}", code != 0


class ServiceState:
    """What `pod status` shows of one service."""

    def __init__(self, spec):
        self.spec = spec
        self.state = "starting"
        self.pid: int | None = None       # host pid of the running program
        self.vpid: int | None = None      # its pid in the pod
        self.restarts = 0
        self.last_end: str | None = None
        self.since = time.time()
        self.settled = trio.Event()       # the first run started, or is over
        self.first_failure: str | None = None
        self.log_pipe: int | None = None  # inode of the current run's output pipe
        self.last_line = ""               # its last line of output (for a failed start)

    def set(self, state: str) -> None:
        self.state = state
        self.since = time.time()

    def as_dict(self) -> dict:
        return {"name": self.spec.name, "state": self.state, "pid": self.pid,
                "vpid": self.vpid, "pea": self.spec.pea, "user": self.spec.user,
                "restart": self.spec.restart, "restarts": self.restarts,
                "last_end": self.last_end, "since": round(self.since, 3),
                "exec": list(self.spec.exec)}


class ServiceManager:
    """Runs the policy's services for one PodDaemon.

    ``daemon`` provides ``run_tagger(argv, pea, uid, gid, stdio,
    on_started=...)``, ``resolve_user(user) -> (uid, gid)`` and
    ``stopping`` (true once the pod is being stopped)."""

    def __init__(self, daemon, services, log: ServiceLog):
        self.daemon = daemon
        self.log = log
        self.states = [ServiceState(s) for s in services]
        self.accepted = False     # `pod start` has succeeded: failures restart from now on
        self.nursery = None

    async def start(self, nursery, adopted: dict | None = None) -> None:
        """Start every service; return once they run, or raise RuntimeError
        naming the first that failed to start or died at once.

        ``adopted`` ({service: (host pid, log pipe read end or None)}, from
        `pod restore`): those services are already running, restored from
        a checkpoint: they are followed, not started, and started again by
        their restart policy once they end."""
        self.nursery = nursery
        adopted = adopted or {}
        if not self.states:
            self.accepted = True
            return
        for st in self.states:
            nursery.start_soon(self._run, st, adopted.get(st.spec.name))
        deadline = trio.current_time() + START_GRACE
        for st in self.states:
            await st.settled.wait()
        await trio.sleep_until(max(deadline, trio.current_time() + START_GRACE))
        for st in self.states:
            if st.first_failure is not None:
                tail = f"; its last output: {st.last_line}" if st.last_line else ""
                raise RuntimeError(f"service {st.spec.name}: {st.first_failure}{tail}")
        self.accepted = True

    def status(self) -> list[dict]:
        return [st.as_dict() for st in self.states]

    async def _run(self, st: ServiceState, adopt=None) -> None:
        try:
            await self._runs(st, adopt)
        finally:
            st.settled.set()     # `start` never waits for a service that will not run

    async def _runs(self, st: ServiceState, adopt=None) -> None:
        spec = st.spec
        delay = RESTART_FIRST
        first = True
        while not self.daemon.stopping:
            began = time.monotonic()
            st.set("starting")
            if adopt is not None:
                final, adopt = await self._adopted_run(st, *adopt), None
            else:
                try:
                    uid, gid = self.daemon.resolve_user(spec.user)
                except Exception as e:  # noqa: BLE001 - reported like a failed exec
                    final = {"error": str(e), "status": 126}
                else:
                    final = await self._one_run(st, uid, gid)
            st.pid = st.vpid = None
            what, failed = describe_end(final, spec.exec[0])
            st.last_end = what
            if first:
                first = False
                if failed and not self.daemon.stopping:
                    st.first_failure = what
                st.settled.set()
            if self.daemon.stopping:
                st.set("stopped")
                self.log.event(spec.name, f"{what} (the pod stops)")
                return
            again = spec.restart == "always" or (spec.restart == "on-failure" and failed)
            if not self.accepted or not again:
                st.set("failed" if failed else "exited")
                self.log.event(spec.name, what)
                return
            if time.monotonic() - began >= RESTART_RESET:
                delay = RESTART_FIRST
            st.set("restarting")
            self.log.event(spec.name, f"{what}; restarting in {delay:g} s")
            await trio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX)
            if not self.daemon.stopping:
                st.restarts += 1

    async def _adopted_run(self, st: ServiceState, pid: int, out_r: int | None) -> dict:
        """Follow a process `pod restore` put back, until it ends. It is a
        child of the pod's pid 1, not of a monitor of ours, so its exit
        status is pid 1's to reap: the end is reported without one."""
        pidfd = os.pidfd_open(pid)
        try:
            if out_r is not None:
                st.log_pipe = os.fstat(out_r).st_ino
                self.nursery.start_soon(self._pump, st, out_r)
            st.pid, st.vpid = pid, procfs.vpid(pid)
            st.set("running")
            st.settled.set()
            self.log.event(st.spec.name, f"restored (pid {st.vpid} in the pod)")
            await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)
        return {"restored": True}

    async def _one_run(self, st: ServiceState, uid: int, gid: int) -> dict:
        spec = st.spec
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        # The pipe's inode names it in a checkpoint's image (pods/checkpoint.py).
        st.log_pipe = os.fstat(out_r).st_ino
        null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        w_open = [True]

        def close_w():
            # Once the tagger holds its copy: our end of the pipe must go,
            # or the reader would never see the end of the output.
            if w_open[0]:
                w_open[0] = False
                os.close(out_w)

        def on_started(msg: dict) -> None:
            st.pid, st.vpid = msg.get("started"), msg.get("vpid")
            st.set("running")
            st.settled.set()
            self.log.event(spec.name, f"started (pid {st.vpid} in the pod)")

        # The pump belongs to the daemon's nursery, not to this run: the
        # output of what a launcher leaves behind (a daemonized server)
        # keeps flowing into the log after the launcher exits.
        self.nursery.start_soon(self._pump, st, out_r)
        try:
            return await self.daemon.run_tagger(
                list(spec.exec), spec.pea, uid, gid, [null, out_w, out_w],
                on_spawned=close_w, on_started=on_started)
        finally:
            close_w()
            os.close(null)

    async def _pump(self, st: ServiceState, fd: int) -> None:
        """Copy one run's output into the log, line by line."""
        os.set_blocking(fd, False)
        stream = trio.lowlevel.FdStream(fd)
        pending = b""
        try:
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                while len(pending) > LINE_MAX:
                    lines.append(pending[:LINE_MAX])
                    pending = pending[LINE_MAX:]
                for raw in lines:
                    self._line(st, raw)
        finally:
            if pending:
                self._line(st, pending)
            await stream.aclose()

    def _line(self, st: ServiceState, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        self.log.line(st.spec.name, text)
        if text.strip():
            st.last_line = text[:200]
