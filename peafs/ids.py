"""UID/GID virtualisation: where PeaFS translates ids (the arithmetic of a
map is kernel/idmap.py's).

On disk, the staging directory holds the pod's *virtual* ids (root-owned
files are uid 0), so one tree can serve pods with different host ranges and
survives a move to another range. The kernel, on the other hand, speaks host
ids: a FUSE reply's st_uid is a host id, which the kernel maps through the
caller's user namespace (pod processes see the virtual id again), and a
request's ctx.uid/gid, a chown's new owner, arrive as host ids.

    host = outside + (virtual - inside)   for IdRange(inside, outside, count)

An on-disk id outside the policy's map (a file copied in by the host with a
stray owner) is shown as the overflow id 65534, the id the kernel itself uses
for "unmapped": it is outside every pod's range, so no pod process owns it,
and pod root's capabilities do not apply to it (the kernel grants
CAP_DAC_OVERRIDE/CAP_FOWNER over an inode only when its ids are mapped into
the caller's namespace). A host id outside the map, coming from a request,
cannot be stored: ``to_virtual`` returns None and the caller refuses with
EPERM (chown to an unmapped id) or refuses the create.
"""

from __future__ import annotations

from kernel import idmap

OVERFLOW_ID = 65534


class IdMap:
    """Translation for one kind of id (uid or gid) through a tuple of ranges."""

    __slots__ = ("_ranges",)

    def __init__(self, ranges):
        # (inside, outside, count) triples; rules/ validated that they do not
        # overlap and never map host 0.
        self._ranges = tuple((r[0], r[1], r[2]) for r in ranges)

    def to_host(self, virtual: int) -> int:
        """The host id for an on-disk (virtual) id; OVERFLOW_ID if unmapped."""
        host = idmap.to_host(self._ranges, virtual)
        return OVERFLOW_ID if host is None else host

    def to_virtual(self, host: int) -> int | None:
        """The on-disk (virtual) id for a host id; None if the pod has none."""
        return idmap.to_pod(self._ranges, host)

    def lines(self) -> str:
        """The map in /proc/PID/uid_map syntax ("inside outside count" lines)."""
        return idmap.lines(self._ranges)

    def as_list(self) -> list[list[int]]:
        return [list(r) for r in self._ranges]


class Ids:
    """The pod's uid and gid maps together."""

    __slots__ = ("uid", "gid")

    def __init__(self, uid_map, gid_map):
        self.uid = IdMap(uid_map)
        self.gid = IdMap(gid_map)
