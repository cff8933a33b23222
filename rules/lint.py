"""Warnings about valid policies: rules that cannot do what they say.

A policy with warnings is still loaded and enforced; ``pod rules check``
prints them (FILE:LINE: warning: ...) and exits 0. They catch what a policy
author most likely did not mean:

* a transition that can never happen, because the pea that would execute
  the program has no "x" on it (docs/FORMAT.md, section 8: the executing pea needs x);
* a pea in complain mode, which logs refusals but enforces nothing;
* a rule that replaces a rule set's rule for the same key with other
  letters (the pea's own rule wins; a later set wins over an earlier one).
"""

from __future__ import annotations

from .errors import Problem
from .lines import key_lines, line_of
from .paths import split_path
from .policy import Policy


def warnings(policy: Policy, text: str, shown: str) -> list[Problem]:
    """The warnings of *policy*, whose source is *text* (for line numbers)."""
    found: list[tuple[tuple, str]] = []
    for pea in policy.peas.values():
        if pea.complain:
            found.append((("pea", pea.name, "complain"),
                          f"pea {pea.name} is in complain mode: its refusals are logged, "
                          "not enforced"))
        for key, perm, origin, old, old_origin in pea.conflicts:
            # The pea's own rule is at its key; a set's rule at the use key.
            at = ("pea", pea.name, "files", key) if origin is None else ("pea", pea.name, "use")
            found.append((at, f'rule "{key}" = "{perm}" of '
                              f"{'pea ' + pea.name if origin is None else 'rule set ' + origin} "
                              f'replaces "{key}" = "{old}" of rule set {old_origin}'))
        for key, target in pea.exec.items():
            if not _may_execute(pea, key):
                found.append((("pea", pea.name, "exec", key),
                              f'transition "{key}" = "{target}" never happens: pea '
                              f"{pea.name} has no x on {'anything below ' if key.endswith('/') and key != '/' else ''}"
                              f"{key.rstrip('/') or '/'}"))
    if not found:
        return []
    lines = key_lines(text)
    problems = [Problem(shown, line_of(lines, path), "warning: " + message)
                for path, message in found]
    problems.sort(key=lambda p: p.line)
    return problems


def _may_execute(pea, key: str) -> bool:
    """Whether *pea* may execute the program *key* names, or (for a
    directory key) at least one program below it."""
    parts = split_path(key)
    if not key.endswith("/"):
        return "x" in pea.match_parts(parts).perm
    # Below the directory: its directory-default (seen from a name no rule
    # can have, as NUL is never in a rule), or any closer rule granting x.
    if "x" in pea.match_parts(parts + ("\0",)).perm:
        return True
    prefix = "/" if key == "/" else key
    return any("x" in perm and rule.startswith(prefix) and rule != prefix
               for rule, perm in pea.files.items())
