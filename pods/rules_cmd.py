"""``pod rules check`` and ``pod rules explain``: the policy tools.

``check`` validates policy files and prints every problem as FILE:LINE:
message (exit 2), like a compiler, so an editor can jump to each line.
``explain`` answers "may this pea do that to this path, and which rule says
so?" in words or as the JSON object of DESIGN section 7; it is how a policy
author verifies a rule before a pod runs under it.
"""

from __future__ import annotations

import argparse
import json
import sys

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the rule engine is imported where a command needs it:
    import rules   # `pod exec`, `pod ps`, ... start faster without it

EXIT_BAD_INPUT = 2

VERBS = {"r": "read", "w": "write", "x": "execute"}


def register(sub) -> None:
    p = sub.add_parser(
        "rules", help="check and explain pod policies",
        description="Check pod policy files and explain which rule decides for a path.")
    rsub = p.add_subparsers(dest="rules_command", metavar="SUBCOMMAND")
    rsub.required = True

    c = rsub.add_parser(
        "check", help="validate policy files (exit 0, or FILE:LINE errors and exit 2)",
        description="Validate each POLICY; print every problem as FILE:LINE: message on "
                    "stderr and exit 2 if there is one, else print POLICY: ok and exit 0. "
                    "Warnings (FILE:LINE: warning: ...) about rules that cannot take effect "
                    "do not change the exit status.")
    c.add_argument("policies", nargs="+", metavar="POLICY", help="policy file (TOML)")
    c.add_argument("-q", "--quiet", action="store_true", help="print nothing when a policy is valid")
    c.set_defaults(func=check)

    e = rsub.add_parser(
        "explain", help="which rule decides for PATH in a pea, and why",
        description="Match PATH against the rules of pea PEA (the four steps of the "
                    "rule semantics) and say which rule decides, what it grants, and "
                    "where executing PATH moves a process.")
    e.add_argument("policy", metavar="POLICY", help="policy file (TOML)")
    e.add_argument("--pea", required=True, metavar="PEA", help="pea whose rules apply")
    e.add_argument("path", metavar="PATH", help="absolute path inside the pod")
    e.add_argument("--json", action="store_true",
                   help='print {"pea", "path", "rule", "kind", "perm", "exec_to"}')
    e.set_defaults(func=explain)


def _load(path: str) -> rules.Policy | None:
    import rules

    try:
        return rules.load(path)
    except rules.PolicyError as error:
        for problem in error.errors:
            print(problem, file=sys.stderr)
        return None


def check(args: argparse.Namespace) -> int:
    status = 0
    for path in args.policies:
        policy = _load(path)
        if policy is None:
            status = EXIT_BAD_INPUT
            continue
        from rules.lint import warnings

        # The file was just read and decoded by load: read it again only
        # for the warnings' line numbers.
        for warning in warnings(policy, policy.file.read_text("utf-8", "replace"), path):
            print(warning, file=sys.stderr)
        if not args.quiet:
            print(f"{path}: ok (pod {policy.name}; peas {', '.join(policy.peas)})")
    return status


def explain(args: argparse.Namespace) -> int:
    policy = _load(args.policy)
    if policy is None:
        return EXIT_BAD_INPUT
    if args.pea not in policy.peas:
        print(f"pod rules explain: policy {args.policy} has no pea {args.pea!r} "
              f"(peas: {', '.join(policy.peas)})", file=sys.stderr)
        return EXIT_BAD_INPUT
    path = args.path
    if len(path) > 1 and path.endswith("/") and not path.endswith("//"):
        path = path[:-1]          # "/var/mail/" names the directory itself
    pea = policy.pea(args.pea)
    try:
        match = pea.match(path)
    except ValueError as e:
        print(f"pod rules explain: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        out = {"pea": pea.name, "path": path, "rule": match.rule,
               "kind": match.kind, "perm": match.perm, "exec_to": match.exec_to}
        origin = pea.origins.get(match.rule) if match.kind != "default" else None
        if origin is not None:
            # Only then: the object of a policy without sets stays as it was.
            out["origin"] = origin
        print(json.dumps(out))
    else:
        print(describe(pea, path, match))
    return 0


def grant_words(perm: str) -> str:
    """"rw" -> "read and write"."""
    verbs = [VERBS[c] for c in perm]
    if len(verbs) <= 1:
        return "".join(verbs)
    return ", ".join(verbs[:-1]) + " and " + verbs[-1]


def exec_rule_of(pea: rules.Pea, path: str) -> str | None:
    """The key of the exec table that decides for *path* (same four steps)."""
    if path in pea.exec and path != "/":
        return path
    parent = path
    while parent != "/":
        parent = parent.rsplit("/", 1)[0] or "/"
        key = parent if parent == "/" else parent + "/"
        if key in pea.exec:
            return key
    return None


def describe(pea: rules.Pea, path: str, match: rules.Match) -> str:
    """The explanation in words: what is granted, which rule decides, why."""
    if match.perm:
        head = f"{pea.name} may {grant_words(match.perm)} {path}"
        denied = [VERBS[c] for c in "rwx" if c not in match.perm]
        if denied:
            head += f" (not {' or '.join(denied)})"
    else:
        head = f"{pea.name} may not read, write or execute {path}"
    if match.kind == "path":
        why = (f'the path-specific rule "{match.rule}" = "{match.perm}" decides '
               "(a rule on the path itself)")
    elif match.kind == "directory" and path == "/":
        why = f'the "/" rule = "{match.perm}" decides ("/" itself is matched by the "/" rule)'
    elif match.kind == "directory":
        why = (f'the directory-default rule "{match.rule}" = "{match.perm}" decides '
               "(closest rule above the path)")
    else:
        why = (f"no rule of {pea.name} covers it, so the implicit \"/\" rule decides: "
               "it grants nothing (fail-safe default)")
    origin = pea.origins.get(match.rule) if match.kind != "default" else None
    if origin is not None:
        why += f" (from rule set {origin}, listed in use)"
    lines = [f"{head}: {why}"]
    if match.kind != "path" and path != "/" and path + "/" in pea.files:
        lines.append(f'note: the directory-default rule "{path}/" applies only below {path}, '
                     f'not to {path} itself; add "{path}" = "..." for the directory itself')
    if match.exec_to is not None:
        rule = exec_rule_of(pea, path)
        line = f'executing it moves the process to pea {match.exec_to}'
        if rule is not None:
            line += f' (transition "{rule}" = "{match.exec_to}")'
        if "x" not in match.perm:
            line += f"; but {pea.name} has no x on it, so the exec is refused"
        lines.append(line)
    elif "x" in match.perm:
        lines.append(f"executing it keeps the process in pea {pea.name} (no transition)")
    return "\n".join(lines)
