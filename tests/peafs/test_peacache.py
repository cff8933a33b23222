"""The per-thread pea cache (peafs/peacache.py), attacked without a mount.

Real cgroups (root: CI is root), real processes, real pidfds; no FUSE. The
file-system-level attacks on the same property are
test_attack_pid_reuse.py (a recycled pid in another pea) and the transition
tests (a moved process is judged under its new pea).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from kernel import cgroup
from peafs.peacache import PeaCache

POD = f"pc{os.getpid()}"


@pytest.fixture
def pod():
    cgroup.ensure_peas(POD, ["a", "b"])
    children: list[int] = []
    try:
        yield children
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        cgroup.remove_pod(POD)


def _sleeper(children: list[int], pea: str | None) -> int:
    """A child process that sleeps until killed, in ``pea`` (or none)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.close(w)
        time.sleep(60)
        os._exit(0)
    os.close(w)
    os.close(r)
    children.append(pid)
    if pea is not None:
        cgroup.join(pid, POD, pea)
    return pid


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_answers_the_pea_and_keeps_it_with_a_pidfd(pod):
    cache = PeaCache(POD)
    pid = _sleeper(pod, "a")
    assert cache.pea_of(pid) == "a"
    assert len(cache) == 1
    assert cache.pea_of(pid) == "a"
    cache.close()
    assert len(cache) == 0


def test_a_move_reported_by_the_exec_watch_is_seen_at_once(pod):
    cache = PeaCache(POD)
    pid = _sleeper(pod, "a")
    assert cache.pea_of(pid) == "a"
    cgroup.join(pid, POD, "b")
    cache.moved()
    assert cache.pea_of(pid) == "b"
    cache.close()


def test_a_process_in_no_pea_is_not_cached(pod):
    # The tagger places a new process in its pea after it exists: an early
    # request (no pea: refused) must not pin "no pea" on it.
    cache = PeaCache(POD)
    pid = _sleeper(pod, None)
    assert cache.pea_of(pid) is None
    assert len(cache) == 0
    cgroup.join(pid, POD, "a")
    assert cache.pea_of(pid) == "a"
    cache.close()


def test_a_dead_threads_entry_is_not_used_for_its_number(pod):
    # The entry's pidfd names the dead thread: the probe fails and the
    # number is read again. (A live process cannot take the number while
    # the cache holds it, so the entry is checked after the death, before
    # any reuse; test_attack_pid_reuse.py forces the reuse itself.)
    cache = PeaCache(POD)
    pid = _sleeper(pod, "a")
    assert cache.pea_of(pid) == "a"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pod.remove(pid)
    assert cache.pea_of(pid) is None
    assert len(cache) == 0


def test_a_read_that_raced_a_move_is_not_recorded(pod, monkeypatch):
    cache = PeaCache(POD)
    pid = _sleeper(pod, "a")
    real = cgroup.pea_of

    def read_then_move(tid, name):
        answer = real(tid, name)          # "a": read before the move
        cgroup.join(pid, POD, "b")
        cache.moved()                     # the watch, from another thread
        return answer

    monkeypatch.setattr(cgroup, "pea_of", read_then_move)
    assert cache.pea_of(pid) == "a"       # this request raced the move
    monkeypatch.setattr(cgroup, "pea_of", real)
    assert len(cache) == 0
    assert cache.pea_of(pid) == "b"
    cache.close()


def test_the_table_is_bounded_and_closes_its_pidfds(pod):
    before = _open_fds()
    cache = PeaCache(POD, max_entries=2)
    pids = [_sleeper(pod, "a") for _ in range(5)]
    for pid in pids:
        assert cache.pea_of(pid) == "a"
        assert len(cache) <= 2
    cache.close()
    assert _open_fds() == before
