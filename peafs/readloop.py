"""pyfuse3's wait for the next request, without epoll while requests queue.

pyfuse3 3.5 waits for each request the same way: its worker task takes a
trio.Lock (two passes through trio's scheduler even when nobody holds it),
registers the FUSE descriptor with epoll and sleeps until trio's loop sees
it readable, even when requests are already queued. In `bench fs`'s
log_append (one WRITE per 120-byte record) that made a write cost PeaFS
42 us against bindfs's 12-23 us; with the wait below, 21 us. A WRITE whose
pwrite was made in C, before any Python ran, cost the same 42 us with
pyfuse3's wait: the wait, not PeaFS's handlers, was the cost. A busy pod
(Postfix accepting mail) pays it for each of its ~54 requests per message.

``wait_fuse_readable`` takes its place (``install``; pyfuse3's loop looks
the name up in its module at each call). The rule that keeps it correct is
pyfuse3's own: the descriptor is blocking, so a task may read only a request
that is there, and only one task may be waiting for the descriptor at a
time. A task that finds a request queued yields once first (so that a
stream of requests cannot starve the other tasks: the exec watch, the worker
threads' answers) and then reads, with no await between the poll() that saw
the request and pyfuse3's read; a task that finds none becomes the one task
waiting in epoll, or, if another already is, parks. Either way the loop's
other tasks run between the requests of a stream.

The yield is made once every YIELD_EVERY of a stream, not before every
request: each one is a pass through trio's scheduler, with an epoll_wait of
its own, ~15% of the request thread's time while the mail pod accepts mail
(py-spy). Yielding at most every 200 us made SMTP accept 394 msg/s against
366 (the mail pod alone, alternated, 500 messages x 6 rounds each) and the
daemon's CPU per message 7% lower. The bound is in time, not in requests,
so that the loop's other tasks (the exec watch's drain, a worker thread's
answer, the parked readers) never wait more than YIELD_EVERY plus the one
handler in progress, however cheap or dear the requests of the stream.

A task handles the request it read alone, and comes back for the next one
itself: most handlers never await, and waking a parked task at every request
"in case" the handler waits cost each request a second pass through trio's
scheduler, a park and an unpark (the web pod's CGI page makes ~390 requests
one at a time, each paid that). A handler that is about to await (a worker
thread: ``fs.off_loop``, the link rules' save) calls ``hand_over`` first,
which wakes one parked task to read the requests that come meanwhile; waking
them all instead cost the CGI page 10% (its large reads wait for worker
threads, whose answers then queued behind the woken herd).
"""

from __future__ import annotations

import select
import time

import pyfuse3
import trio

from . import fusecaps


# How long a stream of requests may hold back the loop's other tasks
# (seconds); the clock is the module's own, so that tests can drive it.
YIELD_EVERY = 0.0002
_clock = time.monotonic


class _State:
    last_yield = 0.0
    waiting = False
    closed = False
    lot: trio.lowlevel.ParkingLot | None = None
    poller: select.poll | None = None
    fd = -1


_state = _State()


def _reset(fd: int) -> None:
    """A new session on descriptor ``fd``: nobody waits, nobody is parked."""
    _state.waiting = _state.closed = False
    _state.last_yield = 0.0
    _state.lot = None
    _state.fd = fd
    _state.poller = select.poll()
    _state.poller.register(fd, select.POLLIN)


async def wait_fuse_readable() -> bool:
    """True when a request can be read without blocking; False when the
    session ends (pyfuse3's loop then returns)."""
    st = _state
    if st.lot is None:
        st.lot = trio.lowlevel.ParkingLot()
    if st.poller.poll(0):
        # Requests queue: yield before reading the next if this stream
        # has not yielded for YIELD_EVERY, or it would hold back every other
        # task of the loop. (With none queued, the wait below yields.)
        if _clock() - st.last_yield >= YIELD_EVERY:
            await trio.lowlevel.checkpoint()
            st.last_yield = _clock()
    while True:
        if st.closed:
            st.lot.unpark_all()  # every parked task ends too
            return False
        ready = st.poller.poll(0)
        if ready:
            if ready[0][1] & ~select.POLLIN:
                # POLLERR/POLLHUP: the mount is gone. Each task must read
                # that end itself (pyfuse3's loop then returns), and the
                # parked ones would otherwise wait for ever, holding
                # pyfuse3.main (and the unmount) open.
                st.lot.unpark_all()
            return True          # read by pyfuse3 before anything else runs
        if st.waiting:
            await st.lot.park()  # another task waits in epoll for us all
            continue
        # pyfuse3's loop checked the session before calling us; before a
        # wait that only a request or pyfuse3.terminate ends, check again.
        if fusecaps.session_exited():
            st.closed = True
            continue
        st.waiting = True
        try:
            await trio.lowlevel.wait_readable(st.fd)
        except trio.ClosedResourceError:
            st.closed = True     # pyfuse3.terminate: the session is ending
        finally:
            st.waiting = False


def hand_over() -> None:
    """Called by a handler about to await: wake one parked task to read the
    requests that come while this one waits, unless a task already waits in
    epoll for them. A handler that awaited without it would leave the file
    system unread until its await ended."""
    st = _state
    if not st.waiting and st.lot is not None:
        st.lot.unpark()


def install() -> bool:
    """Use ``wait_fuse_readable`` in pyfuse3's loop for the next session.
    False (pyfuse3 keeps its own wait) if this pyfuse3 has no such step or
    the library does not know the session."""
    fd = fusecaps.session_fd()
    if not hasattr(pyfuse3, "_wait_fuse_readable") or fd < 0:
        return False
    _reset(fd)
    pyfuse3._wait_fuse_readable = wait_fuse_readable
    return True
