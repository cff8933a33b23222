"""The pea check's I/O: who is calling, the audit log, the FUSE errors.

What is allowed is decided in decide.py (pure); this module is its adapter
on the daemon's side. Every request carries the calling thread's id
(ctx.pid, in the daemon's pid namespace). Its pea is its cgroup, read from
/proc/TID/cgroup once per thread and kept with a pidfd of that thread
(peacache.py): while the request is pending the thread cannot be reaped,
and a cached answer is used only while its pidfd's thread lives, so a
reused id never gets a dead thread's pea; the exec watch empties the cache
whenever it moves a process. A caller in no pea of this pod (a host
process, another pod) is refused everything: that is the barrier
(decide.outsider).

``enforce`` applies a verdict: writes its audit records (with the process
and its virtual uid, which only we can know) and raises its errno as
FUSEError. ``exec_open`` gathers what an exec's transition depends on (the
pending attempt, the stage of the exec, /proc/PID/status, the supervisor's
guard) and records the transition the core allowed.
"""

from __future__ import annotations

import contextlib
import errno

import pyfuse3

from kernel import cgroup, procfs
from rules.policy import Pea

from . import decide, execwatch
from .peacache import PeaCache

ERR = pyfuse3.FUSEError
# criu, run by the daemon for `pod checkpoint` and `pod restore` in the
# pod's checkpoint cgroup (pods/criu.py): it reads the mapped files of every
# pea's processes at a dump and reopens their files with their flags at a
# restore, so it needs every right. Only host root can place a process in
# that cgroup (kernel/cgroup.py CHECKPOINT).
CHECKPOINTER = Pea(cgroup.CHECKPOINT, files={"/": "rwx"})
ALLOW = decide.ALLOW
path_str = decide.path_str


class Enforcer:
    def __init__(self, policy, ids, audit, watch=None):
        self.policy = policy
        self.pod = policy.name
        self.ids = ids
        self.audit = audit
        self.watch = watch        # execwatch.ExecWatch: pending transitions
        self.peas = PeaCache(self.pod)
        self.restoring = False    # PeaFSSession.restoring: all callers are the checkpointer
        if watch is not None:
            watch.on_move = self.peas.moved

    # -- the caller --------------------------------------------------------

    def pea(self, ctx):
        """The caller's Pea, or None for a caller in no pea of this pod."""
        if self.watch is not None and self.watch.busy:
            # A pending transition may have committed: apply it first, so
            # the new program is judged under its new pea (execwatch.py).
            self.watch.settle()
        name = self.peas.pea_of(ctx.pid)
        if name == cgroup.CHECKPOINT or (self.restoring and name is not None):
            return CHECKPOINTER
        return self.policy.peas.get(name)

    def caller(self, ctx, operation: str, path: str = ""):
        """The caller's Pea; EACCES (logged) if it is in none of this pod."""
        pea = self.pea(ctx)
        if pea is None:
            self.enforce(ctx, decide.outsider(operation, path))
        return pea

    # -- verdicts ----------------------------------------------------------

    def enforce(self, ctx, verdict) -> None:
        """Log ``verdict``'s records, then raise its errno, if any."""
        if verdict is ALLOW:
            return
        for rec in verdict.audit:
            self._log(ctx, rec)
        if verdict.error:
            raise ERR(verdict.error)

    def judge(self, ctx, decision, *facts):
        """The caller's Pea, once ``decision(pea, *facts)`` (a function of
        decide.py) let it through: the verdict's records logged, its errno
        raised. The one way a handler asks the core about the caller."""
        pea = self.pea(ctx)
        self.enforce(ctx, decision(pea, *facts))
        return pea

    # -- exec transitions --------------------------------------------------

    def exec_open(self, ctx, paths, node_id: int):
        """Decide an exec open (the kernel's __FMODE_EXEC) of node ``node_id``.

        The pea that judges it is the caller's, except for an interpreter
        opened by an exec whose transition is pending: that one is judged
        under the target pea (the interpreter runs there if the exec
        commits). A transition is only *recorded* here; execwatch.py moves
        the process when the kernel reports the commit, so a failed exec
        leaves it where it was. Returns the judging Pea.
        """
        caller = self.caller(ctx, "exec", path_str(paths[0]) if paths else "")
        watch = self.watch
        # The pods' supervisor settles from its own thread: the pending
        # table is the watch's, under its lock.
        with (watch.lock if watch is not None else contextlib.nullcontext()):
            return self._exec_open(ctx, paths, node_id, caller)

    def _exec_open(self, ctx, paths, node_id, caller):
        watch = self.watch
        # Only a process with a pending attempt needs placing (rare): the
        # common exec costs nothing here.
        tgid = procfs.tgid(ctx.pid) if watch is not None and watch.busy else None
        pending, stage = (None, None)
        if tgid is not None:
            pending, stage = watch.begin(ctx.pid, tgid)
        judge = self.policy.peas[pending.target] if pending is not None else caller
        verdict = decide.exec_open(judge, paths)
        self.enforce(ctx, verdict)
        target = verdict.target
        if pending is not None:
            # An interpreter of the pending exec: it may chain on (its own
            # transition, under the target), and a #! interpreter is what
            # the kernel will load, hence what /proc/PID/exe must show.
            if target is not None:
                pending.target = target
            if stage == "interp":
                pending.expected = node_id
            return judge
        if target is None:
            return judge
        self._record(ctx, caller, target, paths, node_id, tgid, stage)
        return judge

    def _record(self, ctx, caller, target, paths, node_id, tgid, stage) -> None:
        """Gather what the transition depends on, let decide.transition
        judge it, and record it pending."""
        path = path_str(paths[0])
        watch = self.watch
        if watch is None:
            self.enforce(ctx, decide.transition(caller.name, path, watched=False))
        if tgid is None:
            tgid = procfs.tgid(ctx.pid)
            if tgid is None:
                raise ERR(errno.EACCES)     # gone meanwhile
        if stage is None:
            stage = execwatch.exec_stage(ctx.pid)
        # Each fact is read only when the ones before it allow (no /proc
        # read, no call into the supervisor, for an exec already refused).
        facts = {"watched": True, "stage": stage}
        if stage in ("main", "interp"):
            status = procfs.status(tgid) or {}
            facts["threads"] = status.get("Threads")
            facts["tracer"] = status.get("TracerPid", "0")
            if facts["threads"] == "1" and facts["tracer"] == "0" and watch.guard is not None:
                facts["guard"] = watch.guard(tgid)
        self.enforce(ctx, decide.transition(caller.name, path, **facts))
        watch.prune()
        try:
            watch.add(tgid, caller.name, target, node_id, path,
                      self.ids.uid.to_virtual(ctx.uid))
        except OSError:
            raise ERR(errno.EACCES)

    # -- audit -------------------------------------------------------------

    def _log(self, ctx, rec) -> None:
        pid = procfs.tgid(ctx.pid) or ctx.pid
        self.audit.refusal(pea=rec.pea, pid=pid, uid=self.ids.uid.to_virtual(ctx.uid),
                           operation=rec.operation, path=rec.path, need=rec.need,
                           rule=rec.rule, kind=rec.kind, complain=rec.complain)
