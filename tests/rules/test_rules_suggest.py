"""``pod rules suggest`` (rules/suggest.py and pods/rules_cmd.py), in-process.

The audit lines are written by peafs.audit.AuditLog itself, the writer the
pod daemon uses, so the records are the real ones.
"""

from __future__ import annotations

import difflib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import rules
from peafs.audit import AuditLog
from pods import cli
from rules import suggest as sg

REPO = Path(__file__).resolve().parents[2]
MAIL = REPO / "examples" / "mail" / "pod.toml"
WEB = REPO / "examples" / "web" / "pod.toml"

POLICY = """\
# a comment that must stay
[pod]
name = "t"
root = "/srv/t"
default_pea = "a"

[pea.a.files]
"/etc/" = "r"             # configuration
"/etc/shadow" = ""        # never
"/data/one" = "r"
"/usr/bin/tool" = "r"

[pea.a.exec]
"/usr/bin/tool" = "b"

[pea.a.net]
bind = [80]

[pea.b]
complain = true
"""


def write_log(directory: Path, pod: str, lines: list[dict]) -> Path:
    """An audit log of *lines* (dicts of refusal()'s arguments, or
    {"net": ...}), written by the daemon's own writer."""
    log = AuditLog(directory, pod)
    for i, line in enumerate(lines):
        args = dict(pid=100 + i, uid=0, complain=False, kind="default", rule="/")
        args.update(line)
        log.refusal(**args)
    log.close()
    return directory / "audit.log"


def opened(pea, path, need="r", **kw):
    return dict(pea=pea, operation="open", path=path, need=need, **kw)


@pytest.fixture
def pol(tmp_path):
    p = tmp_path / "pod.toml"
    p.write_text(POLICY)
    return p


def records(path: Path):
    return sg.parse_log(path.read_text(), str(path))


def run_suggest(policy: Path, log: Path, *extra) -> int:
    return cli.main(["rules", "suggest", str(policy), "--from", str(log), *extra])


def proposals(policy: Path, log: Path, **kw) -> dict[str, sg.PeaSuggestion]:
    p = rules.load(policy)
    recs = records(log)
    sg.check_records(p, recs, str(log), str(policy))
    return {s.pea: s for s in sg.suggest(p, recs, **kw)}


def rule_map(s: sg.PeaSuggestion) -> dict[str, str]:
    return {r.key: r.perm for r in s.rules}


# -- what is proposed ------------------------------------------------------

def test_directory_rule_when_enough_files_needed_the_same_letters(tmp_path, pol):
    log = write_log(tmp_path, "t", [opened("a", f"/srv/maps/{n}.cf") for n in "abcd"]
                    + [dict(pea="a", operation="opendir", path="/srv/maps", need="r")])
    s = proposals(pol, log)["a"]
    # "/srv/maps/" covers below the directory only; listing it needs "/srv/maps".
    assert rule_map(s) == {"/srv/maps": "r", "/srv/maps/": "r"}
    by_key = {r.key: r for r in s.rules}
    assert by_key["/srv/maps/"].lines == [1, 2, 3, 4]
    assert by_key["/srv/maps"].lines == [5]
    assert s.covered == 5


def test_a_spool_directory_gets_every_letter_its_files_needed(tmp_path, pol):
    """Queue files: created under one name (rw), renamed and read under
    another (w, r); the next run uses new names, so the directory rule
    grants the union. Found by tests/e2e/test_policy_learning.py."""
    log = write_log(tmp_path, "t", [opened("a", "/var/q/tmp1", need="rw")]
                    + [opened("a", f"/var/q/ID{n}", need="w") for n in "abcd"])
    assert rule_map(proposals(pol, log)["a"]) == {"/var/q/": "rw"}


def test_x_reaches_a_directory_rule_only_when_enough_files_needed_it(tmp_path, pol):
    """One loader executed among many libraries read: the libraries must not
    all become executable."""
    log = write_log(tmp_path, "t", [opened("a", f"/lib/lib{n}.so") for n in "abcde"]
                    + [dict(pea="a", operation="exec", path="/lib/ld.so", need="x")])
    assert rule_map(proposals(pol, log)["a"]) == {"/lib/": "r", "/lib/ld.so": "x"}
    (tmp_path / "two").mkdir()
    log = write_log(tmp_path / "two", "t", [dict(pea="a", operation="exec", path=f"/sbin/d{n}",
                                         need="x") for n in "abcd"])
    assert rule_map(proposals(pol, log)["a"]) == {"/sbin/": "x"}


def test_no_directory_rule_below_the_threshold_or_on_root(tmp_path, pol):
    log = write_log(tmp_path, "t", [opened("a", f"/srv/maps/{n}") for n in "abc"]
                    + [opened("a", f"/{n}") for n in "wxyz"])
    s = proposals(pol, log)["a"]
    assert rule_map(s) == {**{f"/srv/maps/{n}": "r" for n in "abc"},
                           **{f"/{n}": "r" for n in "wxyz"}}
    s = proposals(pol, log, min_files=0)["a"]
    assert "/srv/maps/" not in rule_map(s)


def test_no_directory_rule_that_would_grant_a_refused_sibling(tmp_path, pol):
    # A hard link of a file the pea may not touch: a refusal no rule should
    # lift. "/srv/maps/" = "r" would let the link through: exact rules.
    log = write_log(tmp_path, "t", [opened("a", f"/srv/maps/{n}") for n in "abcd"] + [
        dict(pea="a", operation="link", path="/srv/maps/secret", need="rwx",
             rule="no access to the original", kind="link")])
    s = proposals(pol, log)["a"]
    assert rule_map(s) == {f"/srv/maps/{n}": "r" for n in "abcd"}
    assert any('"/srv/maps/" = "r" not proposed: it would also grant /srv/maps/secret, '
               "refused at line 5" in n for n in s.notes)


def test_a_refused_sibling_behind_its_own_deny_rule_does_not_stop_the_directory(tmp_path):
    p = tmp_path / "pod.toml"
    p.write_text(POLICY.replace('"/data/one" = "r"', '"/data/one" = "r"\n"/srv/maps/key" = ""'))
    log = write_log(tmp_path, "t", [opened("a", f"/srv/maps/{n}") for n in "abcd"]
                    + [opened("a", "/srv/maps/key", rule="/srv/maps/key", kind="path")])
    s = proposals(p, log)["a"]
    assert rule_map(s) == {"/srv/maps/": "r"}      # the closer "" rule still wins
    assert any('"/srv/maps/key" = "" denies it on purpose' in n for n in s.notes)


def test_letters_merge_and_existing_rules_widen_in_place(tmp_path, pol):
    log = write_log(tmp_path, "t", [
        opened("a", "/srv/x", "r"), opened("a", "/srv/x", "w"),            # r then w
        opened("a", "/data/one", "w", rule="/data/one", kind="path"),     # in place
        opened("a", "/etc/hosts", "w", rule="/etc/", kind="directory"),    # not its key
    ])
    s = proposals(pol, log)["a"]
    by_key = {r.key: r for r in s.rules}
    assert (by_key["/srv/x"].perm, by_key["/srv/x"].old) == ("rw", None)
    assert by_key["/srv/x"].lines == [1, 2]
    assert (by_key["/data/one"].perm, by_key["/data/one"].old) == ("rw", "r")
    # A new exact rule keeps what "/etc/" gave the path.
    assert (by_key["/etc/hosts"].perm, by_key["/etc/hosts"].old) == ("rw", None)


def test_deliberate_denials_and_root_are_only_reported(tmp_path, pol):
    log = write_log(tmp_path, "t", [
        opened("a", "/etc/shadow", rule="/etc/shadow", kind="path"),
        dict(pea="a", operation="opendir", path="/", need="r"),
    ])
    s = proposals(pol, log)["a"]
    assert s.rules == [] and s.empty()
    assert s.notes == [
        "line 1: open /etc/shadow needs 'r', but the rule \"/etc/shadow\" = \"\" denies it "
        "on purpose: not proposed",
        "line 2: opendir / needs 'r': only the \"/\" rule matches / itself, and it would "
        "grant the whole tree; not proposed"]


def test_exec_and_transitions(tmp_path, pol):
    log = write_log(tmp_path, "t", [
        # a needs x on the program for its transition to b to happen (FORMAT s.8)
        dict(pea="a", operation="exec", path="/usr/bin/tool", need="x",
             rule="/usr/bin/tool", kind="path"),
        # the transition itself refused: no file rule changes that
        dict(pea="a", operation="exec", path="/usr/bin/tool", need="x",
             rule="a process with several threads cannot change pea", kind="transition"),
        # after the transition the program's own accesses are b's
        dict(pea="b", operation="exec", path="/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
             need="x", complain=True),
        opened("b", "/usr/bin/tool", complain=True),
    ])
    found = proposals(pol, log)
    a = {r.key: r for r in found["a"].rules}
    assert list(a) == ["/usr/bin/tool"] and a["/usr/bin/tool"].perm == "rx"
    assert a["/usr/bin/tool"].old == "r"
    assert "moves the process to pea b" in a["/usr/bin/tool"].note
    assert any("not a matter of file rules" in n for n in found["a"].notes)
    assert rule_map(found["b"]) == {"/usr/bin/tool": "r",
                                    "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": "x"}


def test_net_lines(tmp_path, pol):
    net = dict(need="", kind="net")
    log = write_log(tmp_path, "t", [
        dict(pea="a", operation="bind", path="0.0.0.0:8080", rule="bind", **net),
        dict(pea="a", operation="bind", path="[::]:80", rule="bind", **net),      # has it
        dict(pea="a", operation="connect", path="192.0.2.1:443", rule="connect = false", **net),
        dict(pea="a", operation="sendmsg", path="10.88.0.1:53",
             rule="[pod.net] host = false", **net),
    ])
    s = proposals(pol, log)["a"]
    assert [(c.key, c.value, c.lines) for c in s.net] == [("bind", [80, 8080], [1]),
                                                         ("connect", True, [3])]
    assert "review" in s.net[1].note
    assert any("[pod.net] host = false" in n and "yourself" in n for n in s.notes)
    assert any(n == "line 2: the policy allows this by now" for n in s.notes)


# -- the edited policy -----------------------------------------------------

def kept_every_line(old: str, new: str, changed: set[str]) -> bool:
    """Every line of *old* is in *new*, in order, but the *changed* ones."""
    minus = [d[2:] for d in difflib.ndiff(old.splitlines(), new.splitlines())
             if d.startswith("- ")]
    return all(any(c in line for c in changed) for line in minus)


@pytest.mark.parametrize("example", [MAIL, WEB], ids=["mail", "web"])
def test_edit_of_the_examples_parses_and_keeps_every_line(tmp_path, example):
    policy = rules.load(example)
    lines = []
    for pea in policy.peas:
        lines += [opened(pea, f"/opt/app/{n}") for n in "abcde"]
        lines += [opened(pea, "/opt/one", "w"),
                  dict(pea=pea, operation="bind", path="0.0.0.0:9000", need="", rule="bind",
                       kind="net")]
    log = write_log(tmp_path, policy.name, lines)
    recs = records(log)
    found = sg.suggest(policy, recs)
    text = example.read_text()
    new = sg.apply(text, found, today="2025-01-02")
    edited = rules.loads(new, "x.toml", base_dir=example.parent)
    sg.verify(policy, edited, found)
    for pea in policy.peas:
        assert edited.pea(pea).match("/opt/app/zz").perm == "r"
        assert edited.pea(pea).match("/opt/one").perm == "w"
        assert 9000 in edited.pea(pea).bind
    assert kept_every_line(text, new, {"bind ="})
    assert "# pod rules suggest, 2025-01-02: pea smtpd, covers" in new if "mail" in str(example) \
        else "pea httpd" in new


@pytest.mark.parametrize("layout", [
    # dotted keys in the pea's table
    '[pod]\nname = "t"\nroot = "/r"\n\n[pea.a]\nfiles."/etc/" = "r"  # keep\n\n[pea.b]\n',
    # dotted keys at the top level, before any header
    'pea.a.files."/etc/" = "r"\n\n[pod]\nname = "t"\nroot = "/r"\ndefault_pea = "a"\n'
    '[pea.b]\n',
    # an empty files table; a pea with no files table at all
    '[pod]\nname = "t"\nroot = "/r"\ndefault_pea = "a"\n[pea.a.files]\n[pea.b.net]\n'
    'connect = false\n',
    # no newline at the end
    '[pod]\nname = "t"\nroot = "/r"\ndefault_pea = "a"\n[pea.a.files]\n  "/etc/" = "r"\n'
    '[pea.b]',
], ids=["dotted", "top-level", "empty", "no-newline"])
def test_edit_of_other_layouts(tmp_path, layout):
    if "default_pea" not in layout:
        layout = layout.replace('root = "/r"\n', 'root = "/r"\ndefault_pea = "a"\n', 1)
    policy = rules.loads(layout, "p.toml")
    log = write_log(tmp_path, "t", [opened("a", "/srv/x"), opened("b", "/srv/y", "w"),
                                    dict(pea="b", operation="bind", path="0.0.0.0:25",
                                         need="", rule="bind", kind="net")])
    found = sg.suggest(policy, records(log))
    new = sg.apply(layout, found, today="d")
    edited = rules.loads(new, "p.toml")
    sg.verify(policy, edited, found)
    assert edited.pea("a").match("/srv/x").perm == "r"
    assert edited.pea("b").match("/srv/y").perm == "w" and edited.pea("b").bind == {25}
    assert kept_every_line(layout, new, set()) or not layout.endswith("\n")


def test_an_inline_table_is_refused_not_mangled(tmp_path):
    text = '[pod]\nname = "t"\nroot = "/r"\n[pea]\na = {files = {"/etc/" = "r"}}\n'
    policy = rules.loads(text, "p.toml")
    log = write_log(tmp_path, "t", [opened("a", "/srv/x")])
    with pytest.raises(sg.SuggestError, match="inline table"):
        sg.apply(text, sg.suggest(policy, records(log)), today="d")


# -- the command -----------------------------------------------------------

def test_command_prints_a_diff_with_the_lines_explained(tmp_path, pol, capsys):
    log = write_log(tmp_path, "t", [opened("a", f"/srv/maps/{n}") for n in "abcd"]
                    + [opened("a", "/data/one", "w", rule="/data/one", kind="path")])
    assert run_suggest(pol, log) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"--- {pol}\n+++ {pol} (suggested)\n")
    assert '+"/srv/maps/" = "r"   # audit lines 1-4 (4)\n' in out
    assert '-"/data/one" = "r"\n' in out
    assert '+"/data/one" = "rw"\n' in out
    assert f"covers 5 audit lines of {log}" in out
    assert err == ""
    assert pol.read_text() == POLICY           # no --write: nothing written


def test_command_writes_atomically_and_keeps_the_mode(tmp_path, pol, capsys):
    pol.chmod(0o640)
    inode = pol.stat().st_ino
    log = write_log(tmp_path, "t", [opened("a", "/srv/x")])
    assert run_suggest(pol, log, "--write") == 0
    new = pol.read_text()
    assert rules.load(pol).pea("a").match("/srv/x").perm == "r"
    assert new.startswith(POLICY.split("[pea.a.exec]")[0].rstrip("\n"))
    assert stat.S_IMODE(pol.stat().st_mode) == 0o640
    assert pol.stat().st_ino != inode          # renamed over, not rewritten
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".pod.toml")] == []
    assert capsys.readouterr().err == f"{pol}: rules added (pod rules check {pol} to review)\n"


def test_command_refuses_a_policy_changed_meanwhile(tmp_path, pol, capsys, monkeypatch):
    log = write_log(tmp_path, "t", [opened("a", "/srv/x")])
    real = sg.apply

    def apply_while_someone_edits(*a, **kw):
        pol.write_text(POLICY + "# edited meanwhile\n")
        return real(*a, **kw)

    monkeypatch.setattr(sg, "apply", apply_while_someone_edits)
    assert run_suggest(pol, log, "--write") == 2
    assert capsys.readouterr().err == (
        f"pod rules suggest: {pol} changed while suggestions were made; nothing written "
        "(run pod rules suggest again)\n")
    assert pol.read_text() == POLICY + "# edited meanwhile\n"


def test_nothing_to_suggest(tmp_path, pol, capsys):
    log = write_log(tmp_path, "t", [opened("a", "/etc/hosts", rule="/etc/", kind="directory")])
    assert run_suggest(pol, log) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert "nothing to add" in err and "line 1: the policy allows this by now" in err


# -- bad input: one line, exit 2 -------------------------------------------

def test_bad_inputs(tmp_path, pol, capsys):
    other = write_log(tmp_path, "mail", [opened("a", "/x")])
    assert run_suggest(pol, other) == 2
    assert capsys.readouterr().err == (
        f"pod rules suggest: {other}:1: this is an audit line of pod 'mail', but {pol} "
        "is the policy of pod 't'\n")

    (tmp_path / "u").mkdir()
    unknown = write_log(tmp_path / "u", "t", [opened("zed", "/x")])
    assert run_suggest(pol, unknown) == 2
    assert capsys.readouterr().err == (
        f"pod rules suggest: {unknown}:1: pea 'zed' is not in {pol} (peas: a, b)\n")

    assert run_suggest(pol, unknown, "--pea", "zed") == 2
    assert capsys.readouterr().err == (
        f"pod rules suggest: policy {pol} has no pea 'zed' (peas: a, b)\n")

    missing = tmp_path / "none" / "audit.log"
    assert run_suggest(pol, missing) == 2
    assert capsys.readouterr().err == (
        f"pod rules suggest: no audit log at {missing} (run the pod in complain mode first)\n")

    garbage = tmp_path / "garbage.log"
    garbage.write_text('{"pod": "t"}\nnot json\n')
    assert run_suggest(pol, garbage) == 2
    assert capsys.readouterr().err == (
        f"pod rules suggest: {garbage}:2: not an audit line (a JSON object per line)\n")

    broken = tmp_path / "broken.toml"
    broken.write_text('[pod]\nname = "t"\nroot = "/r"\n[pea.a.files]\n"/x" = "rr"\n')
    assert run_suggest(broken, other) == 2
    assert capsys.readouterr().err == f'{broken}:5: permission "rr" of "/x" repeats "r"\n'

    assert cli.main(["rules", "suggest", str(pol), "--pod", "nosuchpod"]) == 2
    assert capsys.readouterr().err == (
        "pod rules suggest: pod nosuchpod is not running; without it give the log with "
        "--from, or let the policy's root name it\n")


def test_default_log_is_beside_the_root_and_no_traceback(tmp_path):
    pol = tmp_path / "pod.toml"
    pol.write_text(POLICY.replace('root = "/srv/t"', 'root = "root"'))
    result = subprocess.run([sys.executable, "-m", "pods.cli", "rules", "suggest", str(pol)],
                            cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert result.stderr == (f"pod rules suggest: no audit log at {tmp_path}/root.peapod/"
                             "audit.log (run the pod in complain mode first)\n")
    (tmp_path / "root.peapod").mkdir()
    write_log(tmp_path / "root.peapod", "t", [opened("a", "/srv/x", complain=True)])
    result = subprocess.run([sys.executable, "-m", "pods.cli", "rules", "suggest", str(pol)],
                            cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert '+"/srv/x" = "r"   # audit line 1\n' in result.stdout


def test_records_are_the_daemons(tmp_path):
    log = write_log(tmp_path, "t", [opened("a", "/srv/x")])
    (line,) = log.read_text().splitlines()
    assert list(json.loads(line)) == ["time", "pod", "pea", "pid", "uid", "operation", "path",
                                      "need", "rule", "kind", "complain"]
