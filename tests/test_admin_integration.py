"""What administrators use: man pages, bash completion, `make install`, the
systemd unit (issue #14, item 7).

The man pages and completions are generated from the live parsers
(pods/docgen.py), so these tests compare them with those parsers, walked
here independently: a subcommand added to `pod` must show up without a test
or the generator changing. Nothing here needs a pod: the completion of pod
names reads directory names under $PEAPOD_RUN/pods, which the tests create.
Everything is written under pytest's tmp_path (make's BUILD directory
included), so the checkout is left as it was.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from peafs.cli import parser as peafs_parser
from pods import docgen
from pods.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PARSERS = {"pod": build_parser, "peafs": peafs_parser}


def subcommands(parser: argparse.ArgumentParser, path=()):
    """(path, parser) of every subcommand, nested ones included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,), sub
                yield from subcommands(sub, path + (name,))


def names_at(parser: argparse.ArgumentParser) -> set[str]:
    return {name for action in parser._actions
            if isinstance(action, argparse._SubParsersAction) for name in action.choices}


def options_of(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def positionals_of(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]


# ------------------------------------------------------------------ man pages

def render(page: Path) -> str:
    """The page as man shows it, in plain ASCII (no bold by overstriking)."""
    env = dict(os.environ, LANG="C", LC_ALL="C", MANWIDTH="100")
    out = subprocess.run(["man", "-P", "cat", "-l", str(page)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return re.sub(r".\x08", "", out)


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_man_page_renders_without_warnings(prog, tmp_path):
    page = tmp_path / f"{prog}.1"
    assert docgen.main(["man", prog, "-o", str(page)]) == 0
    groff = subprocess.run(["groff", "-man", "-ww", "-z", str(page)],
                           capture_output=True, text=True)
    assert (groff.returncode, groff.stderr) == (0, "")
    man = subprocess.run(["man", "--warnings", "-P", "cat", "-l", str(page)],
                         capture_output=True, text=True)
    assert (man.returncode, man.stderr) == (0, "")


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_man_page_lists_every_subcommand_and_option(prog, tmp_path):
    page = tmp_path / f"{prog}.1"
    page.write_text(docgen.man_page(PARSERS[prog](), prog))
    text = render(page)
    lines = [line.strip() for line in text.splitlines()]
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "EXIT STATUS",
                    "ENVIRONMENT", "FILES", "SEE ALSO"):
        assert section in lines, section
    found = list(subcommands(PARSERS[prog]()))
    assert found
    for path, sub in found:
        heading = " ".join((prog,) + path)
        assert heading in lines, heading
        # its subsection: from its heading to the next line that is a heading
        start = lines.index(heading)
        body = []
        for line in lines[start + 1:]:
            if line.startswith(prog + " ") and line in {" ".join((prog,) + p) for p, _ in found}:
                break
            body.append(line)
        # each argument is the tag of an item of its own (not only in the synopsis)
        for action in sub._actions:
            if "--help" in action.option_strings or \
                    isinstance(action, argparse._SubParsersAction):
                continue
            tag = ", ".join(action.option_strings) or action.metavar or action.dest
            assert any(line.startswith(tag) for line in body), (heading, tag)


def test_pod_man_page_documents_statuses_files_environment(tmp_path):
    page = tmp_path / "pod.1"
    page.write_text(docgen.man_page(build_parser(), "pod"))
    text = " ".join(render(page).split())
    for needle in ("125", "126", "127", "128+N", "PEAPOD_RUN", "/run/peapod",
                   "$PEAPOD_RUN/pods/NAME/", "ROOT.peapod/audit.log", "peafs(1)"):
        assert needle in text, needle


def test_generator_refuses_an_unknown_program(capsys):
    with pytest.raises(SystemExit) as exit:
        docgen.main(["man", "nosuchprog"])
    assert exit.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# ------------------------------------------------------------------ bash completion

@pytest.fixture
def completer(tmp_path):
    """complete(prog, *words, cwd=...) -> the set bash's completion offers for
    the last word, driven as readline would: COMP_WORDS, COMP_CWORD, then the
    function `complete -p PROG` names."""
    scripts = {}
    run = tmp_path / "run"
    (run / "pods" / "alpha").mkdir(parents=True)
    (run / "pods" / "beta").mkdir()
    (run / "pods" / "not-a-dir").write_text("")
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    for name in ("a.toml", "b.toml", "notes.txt"):
        (work / name).write_text("")

    def complete(prog, *words, cwd=work, parser=None):
        if parser is not None:      # a parser of the test's own, not the live one
            scripts[prog] = tmp_path / f"{prog}-custom.bash"
            scripts[prog].write_text(docgen.completion(parser, prog))
        elif prog not in scripts:
            scripts[prog] = tmp_path / f"{prog}.bash"
            assert docgen.main(["completion", prog, "-o", str(scripts[prog])]) == 0
        line = " ".join(words)
        script = f"""
            source {shlex.quote(str(scripts[prog]))}
            spec=$(complete -p {prog})
            fn=${{spec#*-F }}; fn=${{fn%% *}}
            COMP_WORDS=({prog} {" ".join(shlex.quote(w) for w in words)})
            COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
            COMP_LINE={shlex.quote(prog + " " + line)}
            COMP_POINT=${{#COMP_LINE}}
            "$fn" {prog} "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
            printf '%s\\n' "${{COMPREPLY[@]}}"
        """
        env = dict(os.environ, PEAPOD_RUN=str(run))
        out = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], cwd=cwd,
                             env=env, capture_output=True, text=True)
        assert (out.returncode, out.stderr) == (0, ""), out
        return {w for w in out.stdout.split("\n") if w}

    return complete


def test_completes_subcommands(completer):
    top = names_at(build_parser())
    assert {"start", "stop"} <= {n for n in top if n.startswith("st")}
    assert completer("pod", "st") == {n for n in top if n.startswith("st")}
    assert completer("pod", "") == top
    for path, sub in subcommands(build_parser()):
        if names_at(sub):             # a group: `pod rules <TAB>`
            assert completer("pod", *path, "") == names_at(sub), path


def test_completes_options_of_each_subcommand(completer):
    for path, sub in subcommands(build_parser()):
        assert completer("pod", *path, "-") == options_of(sub), path


def test_completes_pod_names_from_peapod_run(completer):
    """Every command whose first argument is NAME completes the directories
    under $PEAPOD_RUN/pods (a plain file there is no pod)."""
    takes_name = [path for path, sub in subcommands(build_parser())
                  if positionals_of(sub) and positionals_of(sub)[0].metavar == "NAME"]
    assert ("ps",) in takes_name and ("stop",) in takes_name
    for path in takes_name:
        assert completer("pod", *path, "") == {"alpha", "beta"}, path
    assert completer("pod", "stop", "a") == {"alpha"}
    # after the options and their values, still the name
    assert completer("pod", "stop", "--timeout", "3", "") == {"alpha", "beta"}


def test_completes_policy_files(completer):
    assert completer("pod", "start", "") == {"a.toml", "b.toml", "sub"}
    assert completer("pod", "start", "a") == {"a.toml"}
    assert completer("pod", "rules", "check", "a.toml", "") == {"a.toml", "b.toml", "sub"}
    # `pod audit NAME|POLICY`: both
    assert completer("pod", "audit", "") == {"alpha", "beta", "a.toml", "b.toml", "sub"}


def test_option_values_are_not_completed_as_arguments(completer):
    assert completer("pod", "start", "--timeout", "") == set()
    assert completer("pod", "start", "--timeout", "5", "") == {"a.toml", "b.toml", "sub"}
    # bash splits --timeout=5 into three words
    assert completer("pod", "start", "--timeout", "=", "5", "") == {"a.toml", "b.toml", "sub"}


def test_peafs_completion(completer):
    assert completer("peafs", "") == names_at(peafs_parser())
    assert completer("peafs", "mount", "--policy", "") == {"a.toml", "b.toml", "sub"}


def with_new_subcommand() -> argparse.ArgumentParser:
    """The live parser plus a subcommand this file has never heard of, as
    other branches add `pod status` and `pod logs`."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.add_parser("zz-probe", help="a probe", description="Probe a pod.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--since", metavar="WHEN", help="from WHEN on")
    p.add_argument("--follow-probe", action="store_true", help="keep probing")
    return parser


def test_a_new_subcommand_appears_without_editing_the_generator(completer, tmp_path):
    page = tmp_path / "pod.1"
    page.write_text(docgen.man_page(with_new_subcommand(), "pod"))
    text = render(page)
    assert "pod zz-probe" in [line.strip() for line in text.splitlines()]
    assert "--since WHEN" in text and "keep probing" in text
    parser = with_new_subcommand()
    assert "zz-probe" in completer("pod", "zz", parser=parser)
    assert completer("pod", "zz-probe", "--s", parser=parser) == {"--since"}
    assert completer("pod", "zz-probe", "--since", "x", "", parser=parser) == {"alpha", "beta"}


# ------------------------------------------------------------------ make install

def make(*args, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args],
                          capture_output=True, text=True, check=check)


def installed(prefix: str, scripts) -> set[str]:
    p = prefix.lstrip("/")
    return ({f"{p}/bin/{s}" for s in scripts}
            | {f"{p}/share/man/man1/{s}.1" for s in scripts}
            | {f"{p}/share/bash-completion/completions/{s}" for s in scripts}
            | {f"{p}/lib/systemd/system/peapod@.service"})


def files_under(root: Path) -> set[str]:
    return {str((Path(d) / f).relative_to(root))
            for d, _dirs, files in os.walk(root) for f in files}


def test_make_install_and_uninstall(tmp_path):
    dest, build = tmp_path / "dest", tmp_path / "build"
    # pod is the Makefile's (pods/pod_front.c), the rest pyproject.toml's scripts.
    scripts = ["pod", *tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]]
    make("install", f"DESTDIR={dest}", "PREFIX=/usr", f"BUILD={build}")
    assert files_under(dest) == installed("/usr", scripts)
    usr = dest / "usr"
    for s in scripts:
        wrapper = usr / "bin" / s
        assert os.access(wrapper, os.X_OK)
        target = shlex.split(wrapper.read_text().splitlines()[-1])
        assert target[0] == "exec" and target[2] == "$@"
        assert Path(target[1]) == ROOT / ".venv" / "bin" / s and os.access(target[1], os.X_OK)
        assert (usr / "share/bash-completion/completions" / s).read_text() == \
            docgen.completion(PARSERS[s](), s)
    page = (usr / "share/man/man1/pod.1").read_text()
    for path, _sub in subcommands(build_parser()):
        assert f'.SS "pod {" ".join(path)}"' in page, path
    unit = (usr / "lib/systemd/system/peapod@.service").read_text()
    assert "ExecStart=/usr/bin/pod start --foreground /etc/peapod/%i.toml" in unit
    assert "@BINDIR@" not in unit

    make("uninstall", f"DESTDIR={dest}", "PREFIX=/usr")
    assert files_under(dest) == set()


def test_make_install_default_prefix_is_usr_local(tmp_path):
    dry = make("-n", "install", f"DESTDIR={tmp_path}", f"BUILD={tmp_path}/build").stdout
    for d in ("/usr/local/bin", "/usr/local/share/man/man1",
              "/usr/local/share/bash-completion/completions", "/usr/local/lib/systemd/system"):
        assert f"{tmp_path}{d}" in dry, d


# ------------------------------------------------------------------ systemd

def unit_keys(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values, as systemd reads a unit (keys may repeat)."""
    keys, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        keys.setdefault((section, key.strip()), []).append(value.strip())
    return keys


def test_systemd_unit(tmp_path):
    """The installed unit passes `systemd-analyze verify` (unknown keys,
    bad values, a missing ExecStart program or man page all fail it), and
    its keys are the contract with `pod start --foreground`.

    systemd is installed on the test machine but is not PID 1, so the unit
    cannot be started here: verify loads and checks it without running it.
    Installed with PREFIX under tmp_path, so that ExecStart's program exists.
    Where systemd-analyze is not installed (it is not among the Makefile's
    DEBS), only the keys are checked."""
    prefix = tmp_path / "prefix"
    make("install", f"PREFIX={prefix}", f"BUILD={tmp_path}/build")
    try:
        unit = prefix / "lib/systemd/system/peapod@.service"
        keys = unit_keys(unit.read_text())
        service = {k: v for (s, k), v in keys.items() if s == "Service"}
        assert service["Type"] == ["notify"]
        assert service["NotifyAccess"] == ["main"]
        assert service["ExecStart"] == [f"{prefix}/bin/pod start --foreground /etc/peapod/%i.toml"]
        assert len(service["ExecStop"]) == 1 and \
            re.fullmatch(rf"-?{re.escape(str(prefix))}/bin/pod stop .*%i", service["ExecStop"][0])
        assert service["Restart"] == ["on-failure"]
        assert service["KillMode"] == ["mixed"]
        assert service["Environment"] == ["PEAPOD_RUN=/run/peapod"]
        assert int(service["TimeoutStopSec"][0]) > 5 + 30  # pod stop's wait, at most
        assert keys[("Install", "WantedBy")] == ["multi-user.target"]
        if shutil.which("systemd-analyze"):
            env = dict(os.environ, MANPATH=str(prefix / "share/man"))
            verify = subprocess.run(
                ["systemd-analyze", "verify", str(unit.with_name("peapod@test.service"))],
                env=env, capture_output=True, text=True)
            assert (verify.returncode, verify.stdout, verify.stderr) == (0, "", "")
    finally:
        make("uninstall", f"PREFIX={prefix}")
    assert files_under(prefix) == set()
