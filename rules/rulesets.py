"""Shared rule sets: the files rules a pea takes in with ``use = [...]``.

A set is a TOML file with one ``[files]`` table, written like a pea's. The
project ships sets for what many peas need (``rules/sets/NAME.toml``: the
dynamic loader, the C library, Python, Perl, the name services); a policy
names them by NAME, and names its own sets by a path relative to the policy
file (``"./sets/web.toml"``). Naming the two kinds apart by the "/" keeps a
shipped name from ever being taken for a file beside the policy, or the
reverse.

Reading set files is the only I/O here, as reading the policy is in
``rules.load``. Each problem is a message for the policy line of ``use``,
carrying the set file's own FILE:LINE when there is one, so the one-line
report of ``pod rules check`` still leads to the place to fix.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import PolicyError
from .lines import key_lines, line_of
from .paths import path_problem
from .source import decode, parse, read_bytes

SETS_DIR = Path(__file__).resolve().parent / "sets"
SET_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,30}\Z")


class SetError(Exception):
    """A set that cannot be used; ``messages`` says why, one line each."""

    def __init__(self, messages: list[str]):
        self.messages = messages
        super().__init__("\n".join(messages))


def shipped() -> list[str]:
    """The names of the sets shipped with the project, sorted."""
    try:
        return sorted(p.stem for p in SETS_DIR.glob("*.toml"))
    except OSError:  # pragma: no cover - a broken installation
        return []


def locate(name: str, base_dir: Path) -> Path:
    """The file of set *name*: shipped if it is a bare name, else a path
    relative to *base_dir* (the policy's directory). SetError if unknown."""
    if "/" in name:
        return Path(os.path.normpath(base_dir / name))
    if SET_NAME_RE.match(name) and (SETS_DIR / f"{name}.toml").is_file():
        return SETS_DIR / f"{name}.toml"
    known = ", ".join(shipped()) or "none"
    raise SetError([f"unknown rule set {_q(name)} (shipped sets: {known}; a set of your "
                    f'own is a path relative to the policy, like "./sets/{name}.toml")'])


def load_set(name: str, base_dir: Path) -> dict[str, str]:
    """The rules of set *name*: {path: permission in "rwx" order}."""
    from .policy import normal_perm

    file = locate(name, base_dir)
    shown = str(file)
    try:
        text = decode(read_bytes(file, shown), shown)
        document = parse(text, shown)
    except PolicyError as e:
        # The reader's words are about policies; this file is a set.
        raise SetError([f"rule set {_q(name)}: " + str(p).replace("the policy", "the rule set")
                        .replace("a policy file", "a rule set file") for p in e.errors]) from None
    found: list[tuple[tuple, str]] = []
    for key in document:
        if key != "files":
            found.append(((key,), f"unknown key {_q(key)} (a rule set has one [files] table)"))
    files = document.get("files", {})
    if not isinstance(files, dict):
        found.append((("files",), "files must be a table of path = permission"))
        files = {}
    out: dict[str, str] = {}
    for key, perm in files.items():
        at = ("files", key)
        problem = path_problem(key)
        if problem is not None:
            found.append((at, f"file rule {_q(key)} {problem}"))
        elif not isinstance(perm, str) or normal_perm(perm) is None:
            value = _q(perm) if isinstance(perm, str) else repr(perm)
            found.append((at, f'permission {value} of {_q(key)} is not a string of letters '
                              'from "rwx"'))
        else:
            out[key] = normal_perm(perm)
    if found:
        lines = key_lines(text)
        found.sort(key=lambda f: line_of(lines, f[0]))
        raise SetError([f"rule set {_q(name)}: {shown}:{line_of(lines, at)}: {message}"
                        for at, message in found])
    return out


def _q(text: str) -> str:
    from .validate import quote

    return quote(text)
