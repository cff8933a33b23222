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


async def _serving_worker(r: int, got: list, errors: list, held: trio.Event) -> None:
    """pyfuse3's loop with handlers: a request b"h" waits for ``held`` (a
    worker thread's answer, say) after ``hand_over``, as fs.off_loop does;
    any other is answered at once. Records which task read each request."""
    while await readloop.wait_fuse_readable():
        try:
            req = os.read(r, 1)
        except BlockingIOError:
            errors.append("read with nothing there")
            continue
        got.append((req, trio.lowlevel.current_task()))
        if req == b"h":
            readloop.hand_over()
            await held.wait()


async def _one_at_a_time(w: int, got: list, n: int, req: bytes = b"x") -> None:
    """Send n requests, each after the one before was read (a process making
    one FUSE request at a time, as a CGI's python3 does)."""
    with trio.fail_after(5):
        for _ in range(n):
            before = len(got)
            os.write(w, req)
            while len(got) == before:
                await trio.sleep(0.001)


async def _start_serving(nursery, r: int, got: list, errors: list, held: trio.Event) -> None:
    """Four serving workers, settled: one waits in epoll, three park."""
    for _ in range(4):
        nursery.start_soon(_serving_worker, r, got, errors, held)
    await trio.sleep(0.05)


async def test_a_handler_that_does_not_await_keeps_reading_alone(pipe):
    # The task that read a request and answered it without awaiting reads
    # the next one itself: waking another task "in case" at every request
    # cost each one a second pass through trio's scheduler.
    r, w, _ = pipe
    got, errors, held = [], [], trio.Event()
    async with trio.open_nursery() as nursery:
        await _start_serving(nursery, r, got, errors, held)
        await _one_at_a_time(w, got, 20)
        nursery.cancel_scope.cancel()
    readers = {task for _, task in got}
    assert len(got) == 20 and not errors
    assert len(readers) == 1, f"{len(readers)} tasks took turns reading 20 requests"


async def test_a_handler_that_awaits_hands_the_reading_over(pipe):
    # A handler waiting for a worker thread must not leave the file system
    # unread: the requests that come meanwhile are read by another task.
    r, w, _ = pipe
    got, errors, held = [], [], trio.Event()
    async with trio.open_nursery() as nursery:
        await _start_serving(nursery, r, got, errors, held)
        await _one_at_a_time(w, got, 1, b"h")
        await _one_at_a_time(w, got, 5)
        assert not held.is_set()        # the first handler is still waiting
        holder = got[0][1]
        assert all(task is not holder for _, task in got[1:])
        held.set()
        await _one_at_a_time(w, got, 3)
        nursery.cancel_scope.cancel()
    assert [req for req, _ in got] == [b"h"] + [b"x"] * 8 and not errors


async def _worker_until_the_end(r: int, ended: list) -> None:
    """pyfuse3's loop: a read of nothing (the session's end) ends the task."""
    while await readloop.wait_fuse_readable():
        try:
            if os.read(r, 1) == b"":
                break
        except BlockingIOError:
            continue
    ended.append(1)


async def test_the_end_of_the_mount_ends_every_task(monkeypatch):
    # An unmount makes the FUSE descriptor report an error (POLLERR; a pipe
    # whose writer closed says POLLHUP): every task, parked ones included,
    # must read that end, or pyfuse3.main waits for ever for the parked
    # ones and the daemon never finishes its unmount.
    r, w = os.pipe()
    os.set_blocking(r, False)
    monkeypatch.setattr(fusecaps, "session_exited", lambda: False)  # not told to end: unmounted
    readloop._reset(r)
    ended = []
    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                for _ in range(6):
                    nursery.start_soon(_worker_until_the_end, r, ended)
                await trio.sleep(0.05)
                os.write(w, b"x")
                await trio.sleep(0.05)
                os.close(w)
                w = -1
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    assert len(ended) == 6


async def test_a_stream_yields_to_the_other_tasks_every_yield_interval(pipe, monkeypatch):
    # A stream of queued requests is read without a pass through trio's
    # scheduler per request (each pass cost the mail pod ~15% of the
    # request thread), but never holds back the loop's other tasks (the
    # exec watch's drain, a worker thread's answer) for longer than
    # YIELD_EVERY. A fake clock stands in for the handlers' time: each
    # request "takes" a quarter of the interval.
    r, w, _ = pipe
    now = [100.0]
    step = readloop.YIELD_EVERY / 4
    monkeypatch.setattr(readloop, "_clock", lambda: now[0])
    got, turns = [], []

    async def reader():
        while await readloop.wait_fuse_readable():
            try:
                got.append(os.read(r, 1))
            except BlockingIOError:
                pytest.fail("read with nothing there")
            now[0] += step

    async def other():
        while True:
            turns.append(len(got))
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.sleep(0.05)
        nursery.start_soon(other)
        os.write(w, b"x" * 40)
        with trio.fail_after(5):
            while len(got) < 40:
                await trio.sleep(0)
        nursery.cancel_scope.cancel()
    seen = sorted(set(n for n in turns if 0 < n < 40))
    runs = [b - a for a, b in zip([0] + seen, seen + [40])]
    # trio runs the tasks of one pass in either order, so two turns of the
    # other task may have two of the reader's runs (of 4 requests at most)
    # between them; a reader that yielded at every request would never
    # have read more than 2.
    assert max(runs) <= 8, f"requests read between two turns of another task: {runs}"
    assert max(runs) > 2, f"a pass through the scheduler at every request: {runs}"
