"""kernel/procfs.py: the one /proc/PID/status parser, in-process."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from kernel import procfs


def _pid_never_used() -> int:
    # pids run from 1 to pid_max - 1: pid_max itself is never a process.
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read())


def test_own_status_is_parsed():
    st = procfs.status(os.getpid())
    assert st is not None
    assert int(st["Pid"]) == os.getpid()
    assert procfs.tgid(os.getpid()) == os.getpid()
    assert procfs.ppid(os.getpid()) == os.getppid()
    assert procfs.ints(st["Uid"]) == [os.getuid(), os.geteuid(), os.getuid(), os.getuid()]
    # NSpid: this namespace's pid first, the innermost namespace's last.
    assert procfs.nspid(os.getpid())[0] == os.getpid()
    assert procfs.vpid(os.getpid()) == procfs.nspid(os.getpid())[-1]


def test_a_thread_belongs_to_its_process():
    seen = {}
    ready, done = threading.Event(), threading.Event()

    def body():
        seen["tid"] = threading.get_native_id()
        ready.set()
        done.wait(10)

    t = threading.Thread(target=body)
    t.start()
    try:
        ready.wait(10)
        assert seen["tid"] != os.getpid()
        assert procfs.tgid(seen["tid"]) == os.getpid()
        assert procfs.status(seen["tid"])["Pid"] == str(seen["tid"])
    finally:
        done.set()
        t.join()


def test_a_gone_process_is_none():
    for pid in (_pid_never_used(), 0, -1):
        assert procfs.status(pid) is None
        assert procfs.tgid(pid) is None
        assert procfs.ppid(pid) is None
        assert procfs.nspid(pid) is None
        assert procfs.vpid(pid) is None


def test_a_reaped_child_is_none():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    st = procfs.status(pid)
    # None, unless the number was handed to a new process already.
    assert st is None or st["Pid"] == str(pid)


def test_a_zombie_child_is_listed_until_it_is_reaped():
    # checkpoint._max_vpid counts a zombie through its parent: no
    # cgroup.procs lists one.
    me = os.getpid()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        for _ in range(1000):                  # bounded: 10 s
            if procfs.status(pid)["State"].startswith("Z"):
                break
            time.sleep(0.01)
        assert procfs.status(pid)["State"].startswith("Z")
        assert pid in procfs.children(me, threading.get_native_id())
    finally:
        os.waitpid(pid, 0)
    assert pid not in procfs.children(me, threading.get_native_id())
    assert procfs.children(me, _pid_never_used()) == []


def test_a_process_that_exits_between_open_and_read_is_none(monkeypatch):
    # The kernel answers ESRCH to a read of a dead process's status file.
    def gone(fd, n):
        raise OSError(errno.ESRCH, os.strerror(errno.ESRCH))

    monkeypatch.setattr(procfs.os, "read", gone)
    assert procfs.status(os.getpid()) is None


def test_a_status_longer_than_one_read_is_read_whole():
    # A long Groups line pushes NSpid (after it) beyond the first 8 KiB.
    if os.geteuid() != 0:
        pytest.fail("setgroups needs root")
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(go_w)
            os.close(ready_r)
            os.setgroups(list(range(100000, 103000)))
            os.write(ready_w, b"x")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(go_r)
    try:
        assert os.read(ready_r, 1) == b"x"
        st = procfs.status(pid)
        assert len(procfs.ints(st["Groups"])) == 3000
        assert procfs.nspid(pid)[0] == pid
    finally:
        os.close(go_w)            # EOF: the child exits
        os.waitpid(pid, 0)
        os.close(ready_r)


def test_odd_fields():
    data = (b"Name:\tweird: name\xff\xfe\n"      # a ":" and bytes that are not UTF-8
            b"Umask:\t0022\n"
            b"State:\tS (sleeping)\n"
            b"Tgid:\t42\n"
            b"Groups:\t\n"                        # no supplementary group
            b"NSpid:\t42\t7\t1\n"
            b"no colon here\n"
            b"\n")
    st = procfs.parse(data)
    assert st["Name"] == "weird: name\ufffd\ufffd"
    assert st["Groups"] == "" and procfs.ints(st["Groups"]) == []
    assert procfs.ints(st["NSpid"]) == [42, 7, 1]
    assert st["State"] == "S (sleeping)"
    assert st["no colon here"] == ""
    assert "" not in st


def test_a_field_that_is_not_a_number_is_none(monkeypatch):
    monkeypatch.setattr(procfs, "status", lambda pid: {"Tgid": "x", "PPid": "", "NSpid": "1 y"})
    assert procfs.tgid(1) is None
    assert procfs.ppid(1) is None
    assert procfs.nspid(1) is None
    assert procfs.vpid(1) is None
