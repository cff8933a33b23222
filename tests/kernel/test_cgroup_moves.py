"""kernel/cgroup.py's favors_dynamic_moves, and the note `pod start` prints
from it (pods/lifecycle_cmd.py).

Without ``favordynmods`` on the cgroup2 mount, every pea transition's
cgroup.procs write waits for an RCU grace period (kernel/cgroup.py says what
was measured). The option is read from the mount's super options, which is
where the kernel shows it (/proc/self/mountinfo, after " - ")."""

from __future__ import annotations

from pathlib import Path

import pytest

import rules
from kernel import cgroup, mountinfo
from pods import lifecycle_cmd

REPO = Path(__file__).resolve().parents[2]


def _mounts(super_options: str):
    return [mountinfo.Mount("/sys/fs/cgroup", 30, "tmpfs", "rw,mode=755"),
            mountinfo.Mount("/sys/fs/cgroup/unified", 38, "cgroup2", super_options)]


@pytest.fixture
def cgroup2(monkeypatch):
    state = {"options": "rw"}
    monkeypatch.setattr(cgroup, "_root_cache", None)
    monkeypatch.setattr(mountinfo, "mounts", lambda: _mounts(state["options"]))
    yield state


@pytest.mark.parametrize("options, favored", [
    ("rw", False),
    ("rw,nsdelegate,memory_recursiveprot", False),
    ("rw,favordynmods", True),
    ("rw,nsdelegate,favordynmods,memory_recursiveprot", True),
    ("rw,nofavordynmods_x", False),
])
def test_the_option_is_read_from_the_super_options(cgroup2, options, favored):
    cgroup2["options"] = options
    assert cgroup.favors_dynamic_moves() is favored


def test_no_cgroup2_mount_is_not_favoured(monkeypatch):
    monkeypatch.setattr(cgroup, "_root_cache", None)
    monkeypatch.setattr(mountinfo, "mounts", lambda: _mounts("rw")[:1])
    assert cgroup.favors_dynamic_moves() is False


def test_pod_start_notes_the_cost_only_for_a_pod_with_transitions(cgroup2, capsys):
    web = rules.load(REPO / "examples/web/pod.toml")          # httpd -> cgi
    assert any(pea.exec for pea in web.peas.values())
    lifecycle_cmd._note_slow_transitions(web)
    err = capsys.readouterr().err
    assert err.startswith("pod: note: pod web has exec transitions")
    assert "/sys/fs/cgroup/unified" in err and "favordynmods" in err

    cgroup2["options"] = "rw,favordynmods"
    lifecycle_cmd._note_slow_transitions(web)
    assert capsys.readouterr().err == ""

    cgroup2["options"] = "rw"
    plain = rules.loads('[pod]\nname = "p"\nroot = "/tmp"\n\n[pea.a.files]\n"/" = "r"\n')
    lifecycle_cmd._note_slow_transitions(plain)
    assert capsys.readouterr().err == ""
