"""``pod rules check`` and ``pod rules explain``, in-process and as a command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pods import cli

REPO = Path(__file__).resolve().parents[2]
MAIL = str(REPO / "examples" / "mail" / "pod.toml")
WEB = str(REPO / "examples" / "web" / "pod.toml")


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pods.cli", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_check_valid_policies(capsys):
    assert cli.main(["rules", "check", MAIL, WEB]) == 0
    out, err = capsys.readouterr()
    assert out == (f"{MAIL}: ok (pod mail; peas smtpd, delivery)\n"
                   f"{WEB}: ok (pod web; peas httpd, cgi, db)\n")
    assert err == ""
    assert cli.main(["rules", "check", "-q", MAIL]) == 0
    assert capsys.readouterr() == ("", "")


def test_check_reports_every_problem_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[pod]\nname = "Bad"\nroot = "/r"\n[pea.a.files]\n"/etc/../x" = "rr"\n')
    assert cli.main(["rules", "check", MAIL, str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == f"{MAIL}: ok (pod mail; peas smtpd, delivery)\n"
    assert err == (f'{bad}:2: pod name "Bad" is not valid: use a lower-case letter, then up '
                   'to 30 lower-case letters, digits or "-"\n'
                   f'{bad}:5: file rule "/etc/../x" contains a ".." component\n')


def test_check_missing_file(capsys):
    assert cli.main(["rules", "check", "/nonexistent/pod.toml"]) == 2
    assert capsys.readouterr().err == (
        "/nonexistent/pod.toml: cannot read the policy: No such file or directory\n")


def test_check_as_a_command_without_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe[pod]\n")
    result = run("rules", "check", str(bad))
    assert result.returncode == 2
    assert result.stderr == f"{bad}:1: is not UTF-8 text (byte 0xff)\n"
    assert result.stdout == ""
    result = run("rules", "check", MAIL)
    assert (result.returncode, result.stderr) == (0, "")


def test_explain_json_is_the_design_object(capsys):
    assert cli.main(["rules", "explain", MAIL, "--pea", "smtpd", "/etc/postfix/main.cf", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "pea": "smtpd", "path": "/etc/postfix/main.cf", "rule": "/etc/postfix/",
        "kind": "directory", "perm": "r", "exec_to": None}
    assert cli.main(["rules", "explain", MAIL, "--pea", "smtpd", "--json", "/usr/bin/procmail"]) == 0
    out = capsys.readouterr().out
    assert list(json.loads(out)) == ["pea", "path", "rule", "kind", "perm", "exec_to"]
    assert json.loads(out) == {"pea": "smtpd", "path": "/usr/bin/procmail",
                               "rule": "/usr/bin/procmail", "kind": "path", "perm": "rx",
                               "exec_to": "delivery"}
    assert cli.main(["rules", "explain", MAIL, "--pea", "smtpd", "--json", "/bin/sh"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "pea": "smtpd", "path": "/bin/sh", "rule": "/", "kind": "default", "perm": "",
        "exec_to": None}


def test_explain_in_words(capsys):
    assert cli.main(["rules", "explain", MAIL, "--pea", "smtpd", "/etc/postfix/main.cf"]) == 0
    assert capsys.readouterr().out == (
        "smtpd may read /etc/postfix/main.cf (not write or execute): the directory-default "
        'rule "/etc/postfix/" = "r" decides (closest rule above the path)\n')
    assert cli.main(["rules", "explain", MAIL, "--pea", "smtpd", "/usr/bin/procmail"]) == 0
    assert capsys.readouterr().out == (
        "smtpd may read and execute /usr/bin/procmail (not write): the path-specific rule "
        '"/usr/bin/procmail" = "rx" decides (a rule on the path itself)\n'
        'executing it moves the process to pea delivery (transition "/usr/bin/procmail" = "delivery")\n')
    assert cli.main(["rules", "explain", MAIL, "--pea", "smtpd", "/bin/sh"]) == 0
    assert capsys.readouterr().out == (
        "smtpd may not read, write or execute /bin/sh: no rule of smtpd covers it, so the "
        'implicit "/" rule decides: it grants nothing (fail-safe default)\n')
    assert cli.main(["rules", "explain", WEB, "--pea", "httpd", "/usr/lib/cgi-bin/shop/x.pl"]) == 0
    assert capsys.readouterr().out == (
        "httpd may read and execute /usr/lib/cgi-bin/shop/x.pl (not write): the "
        'directory-default rule "/usr/lib/cgi-bin/" = "rx" decides (closest rule above the path)\n'
        'executing it moves the process to pea cgi (transition "/usr/lib/cgi-bin/" = "cgi")\n')
    assert cli.main(["rules", "explain", WEB, "--pea", "db", "/usr/sbin/mariadbd"]) == 0
    assert capsys.readouterr().out.endswith(
        "executing it keeps the process in pea db (no transition)\n")


def test_explain_notes_that_a_directory_default_skips_the_directory(capsys):
    assert cli.main(["rules", "explain", MAIL, "--pea", "smtpd", "/etc/postfix/"]) == 0
    assert capsys.readouterr().out == (
        "smtpd may read /etc/postfix (not write or execute): the directory-default rule "
        '"/etc/" = "r" decides (closest rule above the path)\n'
        'note: the directory-default rule "/etc/postfix/" applies only below /etc/postfix, '
        'not to /etc/postfix itself; add "/etc/postfix" = "..." for the directory itself\n')


def test_explain_root_and_a_transition_without_x(tmp_path, capsys):
    policy = tmp_path / "p.toml"
    policy.write_text('[pod]\nname = "t"\nroot = "r"\ndefault_pea = "a"\n'
                      '[pea.a.files]\n"/" = "rw"\n[pea.a.exec]\n"/bin/x" = "b"\n[pea.b]\n')
    assert cli.main(["rules", "explain", str(policy), "--pea", "a", "/"]) == 0
    assert capsys.readouterr().out == (
        'a may read and write / (not execute): the "/" rule = "rw" decides '
        '("/" itself is matched by the "/" rule)\n')
    assert cli.main(["rules", "explain", str(policy), "--pea", "a", "/bin/x"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == (
        'executing it moves the process to pea b (transition "/bin/x" = "b"); '
        "but a has no x on it, so the exec is refused")


def test_explain_unknown_pea_and_bad_path(capsys):
    assert cli.main(["rules", "explain", MAIL, "--pea", "nobody", "/etc"]) == 2
    assert capsys.readouterr().err == (
        f"pod rules explain: policy {MAIL} has no pea 'nobody' (peas: smtpd, delivery)\n")
    assert cli.main(["rules", "explain", MAIL, "--pea", "smtpd", "etc/passwd"]) == 2
    assert capsys.readouterr().err == (
        "pod rules explain: path 'etc/passwd' is relative (it must start with /)\n")
    assert cli.main(["rules", "explain", MAIL, "--pea", "smtpd", "/etc/../shadow"]) == 2
    assert capsys.readouterr().err == (
        "pod rules explain: path '/etc/../shadow' contains a \"..\" component\n")


def test_explain_bad_policy_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("")
    assert cli.main(["rules", "explain", str(bad), "--pea", "a", "/"]) == 2
    assert capsys.readouterr().err == (
        f"{bad}:1: empty policy: it needs a [pod] table and at least one [pea.NAME] table\n")


def test_explain_as_a_command():
    result = run("rules", "explain", WEB, "--pea", "cgi", "/run/mysqld/mysqld.sock", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["perm"] == "rw"
    result = run("rules", "explain", WEB, "--pea", "ghost", "/")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_help_texts():
    result = run("--help")
    assert result.returncode == 0 and "rules" in result.stdout
    result = run("rules", "--help")
    assert result.returncode == 0
    assert "check" in result.stdout and "explain" in result.stdout
    result = run("rules", "explain", "--help")
    assert result.returncode == 0 and "--json" in result.stdout and "--pea" in result.stdout
    result = run("rules")
    assert result.returncode == 2 and "Traceback" not in result.stderr


@pytest.mark.parametrize("argv", [["rules", "check"], ["rules", "explain", MAIL, "/etc"]])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2


def test_pod_script_is_installed():
    pod = REPO / ".venv" / "bin" / "pod"
    result = subprocess.run([str(pod), "rules", "check", MAIL], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


def test_check_warns_about_rules_that_cannot_take_effect(tmp_path, capsys):
    policy = tmp_path / "w.toml"
    policy.write_text(
        '[pod]\nname = "t"\nroot = "r"\ndefault_pea = "a"\n'     # 1-4
        "[pea.a]\ncomplain = true\n"                              # 5-6
        '[pea.a.files]\n"/usr/lib/cgi-bin/ok" = "rx"\n"/bin/" = "r"\n"/opt/" = "rx"\n'  # 7-10
        '[pea.a.exec]\n"/usr/lib/cgi-bin/" = "b"\n"/bin/sh" = "b"\n"/sbin/" = "b"\n'   # 11-14
        '"/opt/x/y" = "b"\n"/" = "b"\n'                           # 15-16
        "[pea.b]\n")
    assert cli.main(["rules", "check", str(policy)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{policy}: ok (pod t; peas a, b)\n"
    assert err == (
        f"{policy}:6: warning: pea a is in complain mode: its refusals are logged, not enforced\n"
        f'{policy}:13: warning: transition "/bin/sh" = "b" never happens: pea a has no x on /bin/sh\n'
        f'{policy}:14: warning: transition "/sbin/" = "b" never happens: pea a has no x on '
        "anything below /sbin\n")


def test_examples_have_no_warnings(capsys):
    assert cli.main(["rules", "check", "-q", MAIL, WEB]) == 0
    assert capsys.readouterr() == ("", "")
