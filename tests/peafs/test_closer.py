"""peafs/closer.py: descriptors of a file with a name are closed at once;
those of an unlinked file (whose last close frees it) on the closer thread,
and every one of them is closed by ``stop``. The mount-level property (the
daemon holds no unlinked file once the kernel forgot it) is
test_kept_readers.py's test_an_unlinked_file_is_not_held_open_once_the_kernel_forgets_it."""

from __future__ import annotations

import errno
import fcntl
import os
import threading

import pytest

from peafs.closer import Closer


def _is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError as e:
        assert e.errno == errno.EBADF
        return False
    return True


def _closer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "peafs-close"]


def test_a_file_with_a_name_is_closed_before_close_returns(tmp_path):
    p = tmp_path / "f"
    p.write_text("x")
    fds = [os.open(p, os.O_PATH), os.open(p, os.O_RDONLY)]
    closer = Closer()
    closer.close(fds)
    assert not any(_is_open(fd) for fd in fds)
    assert closer._thread is None             # nothing handed over: no thread
    closer.stop()


def test_an_unlinked_file_is_closed_by_the_thread_and_stop_waits_for_it(tmp_path):
    closer = Closer()
    handed = []
    for i in range(20):
        p = tmp_path / f"u{i}"
        p.write_bytes(b"y" * 65536)
        fds = [os.open(p, os.O_PATH), os.open(p, os.O_RDONLY)]
        os.unlink(p)
        closer.close(fds)
        handed += fds
    assert len(_closer_threads()) == 1
    closer.stop()
    assert not any(_is_open(fd) for fd in handed)
    assert _closer_threads() == []
    closer.stop()                              # idempotent
    # Usable again after stop (a forget that arrives during the unmount).
    p = tmp_path / "late"
    p.write_text("z")
    fd = os.open(p, os.O_PATH)
    os.unlink(p)
    closer.close([fd])
    closer.stop()
    assert not _is_open(fd)


def test_a_descriptor_fstat_cannot_read_is_closed_at_once():
    """A pipe: fstat works, st_nlink is 1 on pipefs; and a closed number
    (fstat fails, EBADF): close() raises it, as os.close would, and never
    hands a number that is not ours to the thread."""
    r, w = os.pipe()
    closer = Closer()
    closer.close([r, w])
    assert not _is_open(r) and not _is_open(w)
    with pytest.raises(OSError) as caught:
        closer.close([r])
    assert caught.value.errno == errno.EBADF
    assert closer._thread is None
