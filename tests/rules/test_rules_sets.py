"""Shared rule sets: ``[pea.NAME] use = [...]`` (rules/rulesets.py)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

import rules
from pods import cli
from rules.rulesets import SETS_DIR, shipped

REPO = Path(__file__).resolve().parents[2]

HEAD = '[pod]\nname = "t"\nroot = "/srv/t"\n\n'


def policy_file(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "pod.toml"
    p.write_text(HEAD + body)
    return p


def errors_of(path: Path) -> list[str]:
    with pytest.raises(rules.PolicyError) as caught:
        rules.load(path)
    return [str(p) for p in caught.value.errors]


def test_shipped_sets_are_valid_and_installed():
    assert shipped() == ["libc", "loader", "nameservice", "perl", "python3"]
    for name in shipped():
        doc = tomllib.loads((SETS_DIR / f"{name}.toml").read_text())
        assert list(doc) == ["files"] and doc["files"]
    # Package data, so a non-editable install carries them too.
    assert 'rules = ["sets/*.toml"]' in (REPO / "pyproject.toml").read_text()


def test_set_rules_join_the_peas_rules(tmp_path):
    p = policy_file(tmp_path, '[pea.a]\nuse = ["loader", "libc", "nameservice"]\n'
                              '[pea.a.files]\n"/srv/" = "r"\n')
    pea = rules.load(p).pea("a")
    loader = pea.match("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    assert (loader.perm, loader.kind) == ("rx", "path")
    assert pea.origins[loader.rule] == "loader"
    assert pea.match("/usr/share/zoneinfo/Europe/Paris").perm == "r"
    assert pea.match("/etc/passwd").perm == "r" and pea.match("/etc/shadow").perm == ""
    assert pea.match("/srv/x").perm == "r" and "/srv/" not in pea.origins
    # A later set replaces an earlier one's rule for the same key; equal ones are no conflict.
    assert pea.origins["/etc/nsswitch.conf"] == "nameservice"
    assert pea.conflicts == ()


def test_own_rule_wins_and_check_warns(tmp_path, capsys):
    p = policy_file(tmp_path, '[pea.a]\nuse = ["libc"]\n\n[pea.a.files]\n'
                              '"/etc/nsswitch.conf" = ""\n"/etc/localtime" = "r"\n')
    pea = rules.load(p).pea("a")
    assert pea.match("/etc/nsswitch.conf").perm == ""
    assert "/etc/nsswitch.conf" not in pea.origins and "/etc/localtime" not in pea.origins
    assert cli.main(["rules", "check", str(p)]) == 0
    out, err = capsys.readouterr()
    # Same letters ("/etc/localtime"): nothing to say.
    assert err == (f'{p}:9: warning: rule "/etc/nsswitch.conf" = "" of pea a replaces '
                   f'"/etc/nsswitch.conf" = "r" of rule set libc\n')
    assert out == f"{p}: ok (pod t; peas a)\n"


def test_conflict_between_sets_is_reported_at_use(tmp_path, capsys):
    (tmp_path / "mine.toml").write_text('[files]\n"/etc/ld.so.cache" = "rw"\n')
    p = policy_file(tmp_path, '[pea.a]\nuse = ["loader", "./mine.toml"]\n')
    assert rules.load(p).pea("a").match("/etc/ld.so.cache").perm == "rw"
    assert cli.main(["rules", "check", "-q", str(p)]) == 0
    assert capsys.readouterr().err == (
        f'{p}:6: warning: rule "/etc/ld.so.cache" = "rw" of rule set ./mine.toml replaces '
        '"/etc/ld.so.cache" = "r" of rule set loader\n')


def test_explain_names_the_set(tmp_path, capsys):
    sets = tmp_path / "mysets"
    sets.mkdir()
    (sets / "web.toml").write_text('# my web files\n[files]\n"/srv/www/" = "r"\n')
    p = policy_file(tmp_path, '[pea.a]\nuse = ["./mysets/web.toml", "python3"]\n')
    assert cli.main(["rules", "explain", str(p), "--pea", "a", "/srv/www/index.html"]) == 0
    assert capsys.readouterr().out == (
        'a may read /srv/www/index.html (not write or execute): the directory-default rule '
        '"/srv/www/" = "r" decides (closest rule above the path) (from rule set '
        "./mysets/web.toml, listed in use)\n")
    assert cli.main(["rules", "explain", str(p), "--pea", "a", "/usr/bin/python3.11",
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "pea": "a", "path": "/usr/bin/python3.11", "rule": "/usr/bin/python3.11",
        "kind": "path", "perm": "rx", "exec_to": None, "origin": "python3"}
    # The pea's own rules and the default have no origin (and no "origin" key).
    assert cli.main(["rules", "explain", str(p), "--pea", "a", "/etc/x", "--json"]) == 0
    assert "origin" not in json.loads(capsys.readouterr().out)


def test_relative_sets_are_relative_to_the_policy(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "shared.toml").write_text('[files]\n"/opt/" = "rx"\n')
    p = tmp_path / "sub" / "pod.toml"
    p.write_text(HEAD + '[pea.a]\nuse = ["../shared.toml"]\n')
    monkeypatch.chdir("/")
    assert rules.load(p).pea("a").match("/opt/bin/x").perm == "rx"
    # loads(): relative to base_dir
    text = HEAD + '[pea.a]\nuse = ["./shared.toml"]\n'
    assert rules.loads(text, "p.toml", base_dir=tmp_path).pea("a").match("/opt/y").perm == "rx"


def test_set_errors(tmp_path):
    p = policy_file(tmp_path, '[pea.a]\nuse = ["nosuch"]\n')
    assert errors_of(p) == [
        f'{p}:6: unknown rule set "nosuch" (shipped sets: libc, loader, nameservice, perl, '
        'python3; a set of your own is a path relative to the policy, like '
        '"./sets/nosuch.toml")']
    bad = tmp_path / "bad.toml"
    bad.write_text('[files]\n"/x" = \n')
    p = policy_file(tmp_path, '[pea.a]\nuse = ["./bad.toml"]\n')
    assert errors_of(p) == [f'{p}:6: rule set "./bad.toml": {bad}:2: not valid TOML: '
                            'Invalid value (column 8)']
    bad.write_text('[files]\n"/x" = "r"\n"/y" = "rr"\n"rel" = "r"\n[exec]\n"/x" = "b"\n')
    assert errors_of(p) == [
        f'{p}:6: rule set "./bad.toml": {bad}:3: permission "rr" of "/y" is not a string '
        'of letters from "rwx"',
        f'{p}:6: rule set "./bad.toml": {bad}:4: file rule "rel" is relative (it must start '
        'with /)',
        f'{p}:6: rule set "./bad.toml": {bad}:5: unknown key "exec" (a rule set has one '
        '[files] table)']
    p = policy_file(tmp_path, '[pea.a]\nuse = ["./missing.toml"]\n')
    assert errors_of(p) == [f'{p}:6: rule set "./missing.toml": {tmp_path}/missing.toml: '
                            'cannot read the rule set: No such file or directory']
    p = policy_file(tmp_path, '[pea.a]\nuse = "libc"\n')
    assert errors_of(p) == [f'{p}:6: use must be an array of rule set names (strings), '
                            'like ["loader", "libc"]']
    p = policy_file(tmp_path, '[pea.a]\nuse = ["libc", "libc"]\n')
    assert errors_of(p) == [f'{p}:6: use lists rule set "libc" twice']
