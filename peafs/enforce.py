"""The pea check: who is calling, and may its pea do this to that path?

Every request carries the calling thread's id (ctx.pid, in the daemon's pid
namespace). Its pea is its cgroup, read from /proc/TID/cgroup once per
thread and kept with a pidfd of that thread (peacache.py): while the request
is pending the thread cannot be reaped, and a cached answer is used only
while its pidfd's thread lives, so a reused id never gets a dead thread's
pea; the exec watch empties the cache whenever it moves a process. A caller
in no pea of this pod (a host process, another pod) is refused everything:
that is the barrier.

Permissions are the rule engine's (rules/): each pod path of the object is
matched for the caller's pea and the needed letters must all be granted, on
every path the object is known by (hard links: intersect). A refusal is
logged to the audit log; a pea in complain mode is logged and let through.
"""

from __future__ import annotations

import contextlib
import errno

import pyfuse3

from kernel import procfs

from . import execwatch
from .peacache import PeaCache

ERR = pyfuse3.FUSEError


def path_str(parts: tuple[str, ...]) -> str:
    return "/" + "/".join(parts)


class Enforcer:
    def __init__(self, policy, ids, audit, watch=None):
        self.policy = policy
        self.pod = policy.name
        self.ids = ids
        self.audit = audit
        self.watch = watch        # execwatch.ExecWatch: pending transitions
        self.peas = PeaCache(self.pod)
        if watch is not None:
            watch.on_move = self.peas.moved

    # -- the caller --------------------------------------------------------

    def pea_name(self, ctx) -> str | None:
        if self.watch is not None and self.watch.busy:
            # A pending transition may have committed: apply it first, so
            # the new program is judged under its new pea (execwatch.py).
            self.watch.settle()
        name = self.peas.pea_of(ctx.pid)
        return name if name in self.policy.peas else None

    def caller(self, ctx, operation: str, path: str = "") :
        """The caller's Pea; EACCES (logged) if it is in none of this pod."""
        name = self.pea_name(ctx)
        if name is None:
            self._log(None, ctx, operation, path, "", "caller is in no pea of this pod",
                      "barrier", False)
            raise ERR(errno.EACCES)
        return self.policy.peas[name]

    # -- permissions -------------------------------------------------------

    @staticmethod
    def granted(pea, paths) -> str:
        """The letters granted on every one of ``paths`` (intersection)."""
        if not paths:
            return ""
        perm = None
        for parts in paths:
            p = pea.match_parts(parts).perm
            perm = p if perm is None else "".join(c for c in perm if c in p)
        return perm

    def check(self, ctx, operation: str, need: str, paths, pea=None):
        """Require ``need`` on every path in ``paths`` for the caller's pea.

        Returns the caller's Pea. Raises EACCES (after logging) on refusal,
        unless the pea is in complain mode.
        """
        if pea is None:
            pea = self.caller(ctx, operation, path_str(paths[0]) if paths else "")
        if not paths:
            # An object with no known name: only a bug gets here. Fail safe.
            self._log(pea.name, ctx, operation, "?", need, "object has no known path",
                      "barrier", pea.complain)
            if not pea.complain:
                raise ERR(errno.EACCES)
            return pea
        for parts in paths:
            m = pea.match_parts(parts)
            missing = "".join(c for c in need if c not in m.perm)
            if missing:
                self._log(pea.name, ctx, operation, path_str(parts), missing, m.rule,
                          m.kind, pea.complain)
                if not pea.complain:
                    raise ERR(errno.EACCES)
        return pea

    def check_some(self, ctx, operation: str, paths, pea) -> None:
        """Require at least one letter of rwx on every one of ``paths``."""
        if self.granted(pea, paths):
            return
        self._log(pea.name, ctx, operation, path_str(paths[0]), "rwx",
                  "no access to the original", "link", pea.complain)
        if not pea.complain:
            raise ERR(errno.EACCES)

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
        self.check(ctx, "exec", "x", paths, pea=judge)
        target = self._target(ctx, judge, paths)
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

    def _target(self, ctx, pea, paths) -> str | None:
        targets = {pea.transition_parts(p) for p in paths}
        if len(targets) > 1:
            # Two names of one program that lead to different peas: we
            # cannot tell which the caller meant, so neither.
            self._log(pea.name, ctx, "exec", path_str(paths[0]), "x",
                      "ambiguous transition (hard links)", "link", False)
            raise ERR(errno.EACCES)
        target = targets.pop() if targets else None
        return None if target == pea.name else target

    def _record(self, ctx, caller, target, paths, node_id, tgid, stage) -> None:
        path = path_str(paths[0])

        def refuse(why: str):
            self._log(caller.name, ctx, "exec", path, "x", why, "transition", False)
            raise ERR(errno.EACCES)

        if self.watch is None:
            refuse("transitions are off (no exec watch)")
        if tgid is None:
            tgid = procfs.tgid(ctx.pid)
            if tgid is None:
                raise ERR(errno.EACCES)
        if stage is None:
            stage = execwatch.exec_stage(ctx.pid)
        if stage not in ("main", "interp"):
            refuse("transition on an ELF interpreter, or an exec open we cannot place")
        status = procfs.status(tgid) or {}
        if status.get("Threads") != "1":
            # The commit event names the process, not the thread: with
            # two threads we could not tell whose exec committed.
            refuse("a process with several threads cannot change pea")
        if status.get("TracerPid", "0") != "0":
            refuse("a traced process cannot change pea")
        why = self.watch.guard(tgid) if self.watch.guard is not None else None
        if why:
            refuse(f"cannot change pea: {why}")
        self.watch.prune()
        try:
            self.watch.add(tgid, caller.name, target, node_id, path,
                           self.ids.uid.to_virtual(ctx.uid))
        except OSError:
            raise ERR(errno.EACCES)

    # -- audit -------------------------------------------------------------

    def log_limit(self, pea: str, ctx, operation: str, path: str, why: str) -> None:
        """A refusal for a resource bound, not a rule (never in complain mode)."""
        self._log(pea, ctx, operation, path, "", why, "limit", False)

    def _log(self, pea, ctx, operation, path, need, rule, kind, complain) -> None:
        pid = procfs.tgid(ctx.pid) or ctx.pid
        self.audit.refusal(pea=pea, pid=pid, uid=self.ids.uid.to_virtual(ctx.uid),
                           operation=operation, path=path, need=need, rule=rule,
                           kind=kind, complain=complain)
