"""The pea check: who is calling, and may its pea do this to that path?

Every request carries the calling thread's id (ctx.pid, in the daemon's pid
namespace). Its pea is its cgroup, read fresh from /proc/TID/cgroup for every
check (cgroup.pea_of): while the request is pending the thread cannot be
reaped, so the id cannot be reused under us, and no cache can hand a reused
id a dead process's pea. A caller in no pea of this pod (a host process,
another pod) is refused everything: that is the barrier.

Permissions are the rule engine's (rules/): each pod path of the object is
matched for the caller's pea and the needed letters must all be granted, on
every path the object is known by (hard links: intersect). A refusal is
logged to the audit log; a pea in complain mode is logged and let through.
"""

from __future__ import annotations

import errno

import pyfuse3

from . import cgroup

ERR = pyfuse3.FUSEError


def path_str(parts: tuple[str, ...]) -> str:
    return "/" + "/".join(parts)


def tgid_of(tid: int) -> int | None:
    """The process (thread group) a thread id belongs to."""
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class Enforcer:
    def __init__(self, policy, ids, audit):
        self.policy = policy
        self.pod = policy.name
        self.ids = ids
        self.audit = audit

    # -- the caller --------------------------------------------------------

    def pea_name(self, ctx) -> str | None:
        name = cgroup.pea_of(ctx.pid, self.pod)
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

    # -- exec transitions --------------------------------------------------

    def exec_transition(self, ctx, pea, paths) -> None:
        """Move the calling process to the pea its exec names, before the
        exec goes on (the kernel waits for our reply to the open)."""
        targets = {pea.transition_parts(p) for p in paths}
        if len(targets) > 1:
            # Two names of one program that lead to different peas: we
            # cannot tell which the caller meant, so neither.
            self._log(pea.name, ctx, "exec", path_str(paths[0]), "x",
                      "ambiguous transition (hard links)", "link", False)
            raise ERR(errno.EACCES)
        target = targets.pop() if targets else None
        if target is None or target == pea.name:
            return
        tgid = tgid_of(ctx.pid)
        if tgid is None:
            raise ERR(errno.EACCES)
        try:
            cgroup.join(tgid, self.pod, target)
        except cgroup.CgroupError:
            self._log(pea.name, ctx, "exec", path_str(paths[0]), "x",
                      f"cannot move process to pea {target}", "barrier", False)
            raise ERR(errno.EACCES)

    # -- audit -------------------------------------------------------------

    def _log(self, pea, ctx, operation, path, need, rule, kind, complain) -> None:
        pid = tgid_of(ctx.pid) or ctx.pid
        self.audit.refusal(pea=pea, pid=pid, uid=self.ids.uid.to_virtual(ctx.uid),
                           operation=operation, path=path, need=need, rule=rule,
                           kind=kind, complain=complain)
