"""The Enforcer (peafs/enforce.py), in-process: the adapter that finds the
caller's pea, writes a verdict's audit records and raises its errno, and
gathers the facts of an exec transition. /proc reads are replaced by fakes
(the membership of a cgroup needs a pod); the decisions are decide.py's
(test_decide.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from types import SimpleNamespace

import pyfuse3
import pytest

import rules
from kernel import procfs
from peafs import decide, execwatch
from peafs.decide import ALLOW, Record, Verdict
from peafs.enforce import Enforcer
from peafs.ids import Ids
from peafs.peacache import PeaCache

POLICY = r'''
[pod]
name = "t"
root = "/r"
default_pea = "p"
uid_map = [[0, 200000, 65536]]
gid_map = [[0, 200000, 65536]]

[pea.p.files]
"/" = "r"
"/bin/" = "rx"
"/cgi/" = "rx"

[pea.p.exec]
"/cgi/" = "cgi"

[pea.cgi.files]
"/" = "rx"

[pea.cgi.exec]
"/cgi/next" = "last"

[pea.last.files]
"/" = "rx"

[pea.learn]
complain = true
'''

CGI = [("cgi", "run")]


class Audit:
    def __init__(self):
        self.lines = []

    def refusal(self, **entry):
        self.lines.append(entry)


class Watch:
    """The parts of execwatch.ExecWatch the Enforcer uses."""

    def __init__(self, busy=False, pending=None, stage=None):
        self.busy = busy
        self.lock = threading.RLock()
        self.guard = None
        self.added = []
        self.settled = 0
        self._begin = (pending, stage)

    def settle(self):
        self.settled += 1

    def begin(self, tid, tgid):
        return self._begin

    def prune(self):
        pass

    def add(self, *args):
        self.added.append(args)


@pytest.fixture
def policy():
    return rules.loads(POLICY)


@pytest.fixture
def member(monkeypatch):
    """Which pea the caller's cgroup names (the pea cache reads /proc;
    tests/peafs/test_peacache.py attacks it on real processes)."""
    who = {"pea": "p"}
    monkeypatch.setattr(PeaCache, "pea_of", lambda self, tid: who["pea"])
    return who


@pytest.fixture
def proc(monkeypatch):
    """/proc/PID/status and the exec stage, as the test sets them; every
    read is counted."""
    facts = {"status": {"Threads": "1", "TracerPid": "0"}, "stage": "main", "reads": []}

    def status(pid):
        facts["reads"].append(("status", pid))
        return facts["status"]

    def stage(tid):
        facts["reads"].append(("stage", tid))
        return facts["stage"]

    monkeypatch.setattr(procfs, "status", status)
    monkeypatch.setattr(procfs, "tgid", lambda tid: tid)
    monkeypatch.setattr(execwatch, "exec_stage", stage)
    return facts


def ctx(uid=200005):
    return SimpleNamespace(pid=os.getpid(), uid=uid, gid=uid)


def enforcer(policy, watch=None):
    audit = Audit()
    return Enforcer(policy, Ids(policy.uid_map, policy.gid_map), audit, watch), audit


def raises(errno_, fn, *args):
    with pytest.raises(pyfuse3.FUSEError) as e:
        fn(*args)
    assert e.value.errno == errno_


# -- the caller ---------------------------------------------------------------

def test_the_callers_pea_comes_from_its_cgroup(policy, member):
    enf, _ = enforcer(policy)
    assert enf.pea(ctx()) is policy.pea("p")
    member["pea"] = "gone"          # a pea this policy does not have (any more)
    assert enf.pea(ctx()) is None
    member["pea"] = None            # no pea of this pod
    assert enf.pea(ctx()) is None


def test_an_outsider_is_refused_and_logged(policy, member):
    member["pea"] = None
    enf, audit = enforcer(policy)
    raises(errno.EACCES, enf.caller, ctx(), "lookup", "/x")
    assert audit.lines == [dict(pea=None, pid=os.getpid(), uid=5, operation="lookup", path="/x",
                                need="", rule=decide.BARRIER, kind="barrier", complain=False)]


def test_a_pending_transition_is_settled_before_the_pea_is_read(policy, member):
    watch = Watch(busy=True)
    enf, _ = enforcer(policy, watch)
    enf.pea(ctx())
    assert watch.settled == 1


# -- applying verdicts -----------------------------------------------------------

def test_allow_logs_nothing(policy):
    enf, audit = enforcer(policy)
    enf.enforce(ctx(), ALLOW)
    enf.enforce(ctx(), Verdict(0))
    assert audit.lines == []


def test_a_refusal_is_logged_with_the_process_and_its_virtual_uid(policy):
    enf, audit = enforcer(policy)
    rec = Record("p", "open", "/etc/x", "w", "/", "directory", False)
    raises(errno.EACCES, enf.enforce, ctx(200007), Verdict(errno.EACCES, (rec,)))
    assert audit.lines == [dict(pea="p", pid=os.getpid(), uid=7, operation="open",
                                path="/etc/x", need="w", rule="/", kind="directory",
                                complain=False)]


def test_an_unmapped_caller_is_logged_without_a_uid(policy):
    enf, audit = enforcer(policy)
    rec = Record("p", "open", "/x", "r", "/", "default", False)
    raises(errno.EACCES, enf.enforce, ctx(0), Verdict(errno.EACCES, (rec,)))
    assert audit.lines[0]["uid"] is None


def test_complain_records_are_logged_and_the_request_goes_ahead(policy):
    enf, audit = enforcer(policy)
    recs = (Record("learn", "open", "/a", "r", "/", "default", True),
            Record("learn", "open", "/b", "r", "/", "default", True))
    enf.enforce(ctx(), Verdict(0, recs))
    assert [(e["path"], e["complain"]) for e in audit.lines] == [("/a", True), ("/b", True)]


def test_an_errno_without_records_is_raised_without_a_line(policy):
    enf, audit = enforcer(policy)
    raises(errno.EPERM, enf.enforce, ctx(), decide.EPERM)
    raises(errno.ENFILE, enf.enforce, ctx(), decide.over_share("p", "open", [("x",)], 3))
    assert [e["kind"] for e in audit.lines] == ["limit"]


def test_judge_returns_the_callers_pea(policy, member):
    enf, audit = enforcer(policy)
    assert enf.judge(ctx(), decide.check, "open", "r", [("etc",)]) is policy.pea("p")
    raises(errno.EACCES, enf.judge, ctx(), decide.check, "open", "w", [("etc",)])
    assert audit.lines[-1]["need"] == "w"
    member["pea"] = "learn"
    assert enf.judge(ctx(), decide.check, "open", "w", [("etc",)]) is policy.pea("learn")
    assert audit.lines[-1]["complain"] is True


# -- exec opens ------------------------------------------------------------------

def test_an_exec_without_transition(policy, member, proc):
    enf, audit = enforcer(policy, Watch())
    assert enf.exec_open(ctx(), [("bin", "ls")], 7) is policy.pea("p")
    raises(errno.EACCES, enf.exec_open, ctx(), [("etc", "sh")], 7)
    assert audit.lines[-1]["need"] == "x"
    assert proc["reads"] == []      # nothing of /proc for an exec without transition


def test_a_transition_is_recorded_pending(policy, member, proc):
    watch = Watch()
    enf, audit = enforcer(policy, watch)
    assert enf.exec_open(ctx(), CGI, 9) is policy.pea("p")     # judged under the caller
    assert watch.added == [(os.getpid(), "p", "cgi", 9, "/cgi/run", 5)]
    assert audit.lines == []


def test_without_an_exec_watch_no_transition(policy, member, proc):
    enf, audit = enforcer(policy, None)
    raises(errno.EACCES, enf.exec_open, ctx(), CGI, 9)
    assert audit.lines[-1]["rule"] == "transitions are off (no exec watch)"
    assert audit.lines[-1]["kind"] == "transition"


@pytest.mark.parametrize("facts, why, reads", [
    ({"stage": "elf_interp"}, "transition on an ELF interpreter", ["stage"]),
    ({"status": {"Threads": "2", "TracerPid": "0"}}, "a process with several threads",
     ["stage", "status"]),
    ({"status": None}, "a process with several threads", ["stage", "status"]),
    ({"status": {"Threads": "1", "TracerPid": "77"}}, "a traced process", ["stage", "status"]),
])
def test_a_transition_refused_reads_no_more_than_it_needs(policy, member, proc, facts, why,
                                                          reads):
    proc.update(facts)
    watch = Watch()
    guarded = []
    watch.guard = lambda tgid: guarded.append(tgid)
    enf, audit = enforcer(policy, watch)
    raises(errno.EACCES, enf.exec_open, ctx(), CGI, 9)
    assert audit.lines[-1]["rule"].startswith(why) and audit.lines[-1]["complain"] is False
    assert [r[0] for r in proc["reads"]] == reads
    assert watch.added == [] and guarded == []


def test_the_supervisors_guard_holds_a_transition_back(policy, member, proc):
    watch = Watch()
    watch.guard = lambda tgid: "a signal is armed towards it"
    enf, audit = enforcer(policy, watch)
    raises(errno.EACCES, enf.exec_open, ctx(), CGI, 9)
    assert audit.lines[-1]["rule"] == "cannot change pea: a signal is armed towards it"
    assert watch.added == []


def test_an_interpreter_of_a_pending_exec_is_judged_under_the_target(policy, member, proc):
    pending = SimpleNamespace(target="cgi", expected=9)
    watch = Watch(busy=True, pending=pending, stage="interp")
    enf, audit = enforcer(policy, watch)
    # /etc/sh: no x for p, but x for cgi, where it would run.
    assert enf.exec_open(ctx(), [("etc", "sh")], 11) is policy.pea("cgi")
    assert pending.expected == 11 and pending.target == "cgi"
    # An interpreter with a transition of its own chains on.
    assert enf.exec_open(ctx(), [("cgi", "next")], 12) is policy.pea("cgi")
    assert pending.target == "last" and pending.expected == 12
    assert watch.added == [] and audit.lines == []


def test_the_ambiguous_exec_is_refused_under_the_lock(policy, member, proc):
    class Lock(contextlib.AbstractContextManager):
        held = 0

        def __enter__(self):
            Lock.held += 1

        def __exit__(self, *exc):
            Lock.held -= 1

    watch = Watch()
    watch.lock = Lock()
    enf, audit = enforcer(policy, watch)
    raises(errno.EACCES, enf.exec_open, ctx(), [("cgi", "run"), ("bin", "ls")], 9)
    assert audit.lines[-1]["rule"] == "ambiguous transition (hard links)"
    assert Lock.held == 0
