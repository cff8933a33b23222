"""User namespace id maps: ids in the pod <-> ids on the host.

A map is a sequence of ranges (inside, outside, count), the lines of
/proc/PID/uid_map: pod ids inside..inside+count-1 are host ids
outside..outside+count-1. Any sequence of 3-tuples works (rules.IdRange
named tuples, the lists of state.json).

    host = outside + (pod - inside)
"""

from __future__ import annotations


def to_host(ranges, pod_id: int) -> int | None:
    """The host id of pod id ``pod_id``; None if the map does not cover it."""
    for inside, outside, count in ranges:
        if inside <= pod_id < inside + count:
            return outside + (pod_id - inside)
    return None


def to_pod(ranges, host_id: int) -> int | None:
    """The pod id of host id ``host_id``; None if the map does not cover it."""
    for inside, outside, count in ranges:
        if outside <= host_id < outside + count:
            return inside + (host_id - outside)
    return None


def is_mapped(ranges, pod_id: int) -> bool:
    """True if pod id ``pod_id`` has a host id (a process may take it)."""
    return to_host(ranges, pod_id) is not None


def lines(ranges) -> str:
    """The map as the kernel reads it from /proc/PID/uid_map or gid_map:
    one "inside outside count" line per range (written in one write(2))."""
    return "".join(f"{i} {o} {c}\n" for i, o, c in ranges)
