"""Pea-Pod policies: parse and validate a pod's TOML file; match paths to rules.

    import rules
    policy = rules.load("examples/mail/pod.toml")   # or rules.PolicyError
    policy.pea("smtpd").match("/etc/postfix/main.cf")   # Match(perm, rule, kind, exec_to)
    policy.pea("smtpd").transition("/usr/bin/procmail")  # "delivery" or None

Pure: no FUSE, no trio, no system calls beyond reading the policy file.
docs/FORMAT.md is the reference of the file format and of the matching.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import PolicyError, Problem
from .lines import key_lines, line_of
from .policy import IdRange, Limits, Mount, Net, Pea, Policy
from .source import MAX_BYTES, decode, parse, read_bytes
from .tree import Match
from .validate import Checker

__all__ = ["load", "loads", "Policy", "Pea", "Match", "PolicyError", "Problem",
           "IdRange", "Mount", "Net", "Limits", "MAX_BYTES"]


def load(path: os.PathLike | str) -> Policy:
    """Read and validate the policy file at *path* (PolicyError if bad).

    A relative ``root`` in the file is relative to the file's directory.
    """
    shown = str(path)
    data = read_bytes(path, shown)
    file = Path(os.path.abspath(path))
    return _build(data, shown, file.parent, file)


def loads(text: str | bytes, filename: str = "<string>", base_dir=None) -> Policy:
    """Validate policy *text*; *filename* is used in messages; a relative
    ``root`` is relative to *base_dir* (default: the current directory)."""
    base = Path(os.path.abspath(base_dir if base_dir is not None else os.getcwd()))
    return _build(text, filename, base, None)


def _build(data: str | bytes, shown: str, base_dir: Path, file: Path | None) -> Policy:
    text = decode(data, shown)
    document = parse(text, shown)
    if not document:
        raise PolicyError([Problem(shown, 1, "empty policy: it needs a [pod] table and "
                                             "at least one [pea.NAME] table")])
    checker = Checker(base_dir)
    policy = checker.document(document, file)
    if checker.problems:
        try:
            lines = key_lines(text)
        except Exception:  # pragma: no cover - a scanner bug must not hide the problems
            lines = {}     # (each then points at line 1 rather than raising)
        problems = [Problem(shown, line_of(lines, path), message)
                    for path, message in checker.problems]
        # In file order; equal lines keep the order they were found in.
        problems.sort(key=lambda p: p.line)
        raise PolicyError(list(dict.fromkeys(problems)))
    return policy
