"""peafs/readloop.py: pyfuse3's wait for a request, replaced.

The FUSE descriptor is blocking: a task that read when no request was there
would stop the whole file system until the next request. So the wait may
say "readable" only when a request is there, with nothing awaited before
the read, and only one task may wait in epoll at a time (trio refuses a
second). Checked here on a pipe standing in for the session's descriptor,
with tasks that do what pyfuse3's loop does: wait, then read at once.
"""

from __future__ import annotations

import os

import pytest
import trio

from peafs import fusecaps, readloop


@pytest.fixture
def pipe(monkeypatch):
    r, w = os.pipe()
    os.set_blocking(r, False)     # a read of an empty pipe fails here instead of hanging
    state = {"exited": False}
    monkeypatch.setattr(fusecaps, "session_exited", lambda: state["exited"])
    readloop._reset(r)
    yield r, w, state
    os.close(r)
    os.close(w)


async def _worker(r: int, got: list, errors: list) -> None:
    """pyfuse3's loop: wait, then read one request (one byte) at once."""
    while await readloop.wait_fuse_readable():
        try:
            got.append(os.read(r, 1))
        except BlockingIOError:
            errors.append("read with nothing there")   # the loop would have blocked


async def test_every_request_is_read_once_and_no_read_finds_nothing(pipe):
    r, w, _ = pipe
    got, errors = [], []
    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(_worker, r, got, errors)
        await trio.sleep(0.05)
        for burst in (1, 5, 40, 3):
            os.write(w, b"x" * burst)
            await trio.sleep(0.05)
        with trio.fail_after(5):
            while len(got) < 49:
                await trio.sleep(0.01)
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert len(got) == 49 and not errors


async def test_one_task_waits_in_epoll_the_others_park(pipe):
    r, w, _ = pipe
    got, errors = [], []
    # trio's own tasks may wait for reading too (its wake-up socket).
    before = trio.lowlevel.current_statistics().io_statistics.tasks_waiting_read
    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(_worker, r, got, errors)
        await trio.sleep(0.05)
        # trio raises BusyResourceError for a second waiter on one fd: none
        # was raised, and exactly one task is the waiter.
        assert readloop._state.waiting
        stats = trio.lowlevel.current_statistics()
        assert stats.io_statistics.tasks_waiting_read - before == 1
        assert len(readloop._state.lot) == 5
        nursery.cancel_scope.cancel()
    assert not errors


async def test_the_end_of_the_session_ends_every_task(pipe):
    r, w, state = pipe
    got, errors = [], []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(_worker, r, got, errors)
            await trio.sleep(0.05)
            # pyfuse3.terminate: the session exits and the waiter is woken
            # with ClosedResourceError; the parked tasks return too.
            state["exited"] = True
            trio.lowlevel.notify_closing(r)
    assert not got and not errors


async def test_a_wake_up_with_nothing_to_read_is_not_a_request(pipe, monkeypatch):
    # epoll may wake the waiter for nothing: another task already read
    # what it was woken for, or a spurious wake-up. It must look again,
    # never hand pyfuse3 a read that would block the file system.
    r, w, _ = pipe
    real = trio.lowlevel.wait_readable
    spurious = [3]

    async def wake_for_nothing(fd):
        if spurious[0]:
            spurious[0] -= 1
            await trio.sleep(0.01)
            return
        await real(fd)

    monkeypatch.setattr(trio.lowlevel, "wait_readable", wake_for_nothing)
    got, errors = [], []
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(_worker, r, got, errors)
        await trio.sleep(0.1)
        os.write(w, b"x")
        with trio.fail_after(5):
            while not got:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert got == [b"x"] and not errors and spurious == [0], errors[:1]
