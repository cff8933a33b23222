"""``pod rules check`` and ``pod rules explain``: the policy tools.

``check`` validates policy files and prints every problem as FILE:LINE:
message (exit 2), like a compiler, so an editor can jump to each line.
``explain`` answers "may this pea do that to this path, and which rule says
so?" in words or as a JSON object; it is how a policy
author verifies a rule before a pod runs under it.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from pathlib import Path

TYPE_CHECKING = False      # typing itself costs every command milliseconds
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

    g = rsub.add_parser(
        "suggest", help="propose the rules that would have allowed what the audit log shows",
        description="Read the pod's audit log (complain-mode grants and refusals) and "
                    "propose, per pea, the fewest rules that would have allowed them. "
                    "Prints a unified diff of POLICY (comments and layout kept; each "
                    "proposed rule says which audit lines it covers); --write applies it. "
                    "What no rule should change is only reported, on stderr.")
    g.add_argument("policy", metavar="POLICY", help="policy file (TOML)")
    g.add_argument("--pea", metavar="PEA", help="only this pea")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--from", dest="log", metavar="AUDIT_LOG",
                     help="audit log to read (default: ROOT.peapod/audit.log of the policy's root)")
    src.add_argument("--pod", metavar="NAME", help="the audit log of running pod NAME")
    g.add_argument("--min-files", type=int, default=4, metavar="K",
                   help="files directly in one directory, needing the same letters, that "
                        "make a directory rule (default 4; 0: exact rules only)")
    g.add_argument("--write", action="store_true",
                   help="write the change into POLICY (atomically, after checking it)")
    g.set_defaults(func=suggest)

    r = rsub.add_parser(
        "reload", help="apply a changed policy to a running pod, without a restart",
        description="Apply POLICY (default: the file the pod was started from) to running "
                    "pod NAME: pea rules, complain flags, transitions and network rules "
                    "change for every later decision; processes keep their pea; peas may "
                    "be added, and removed when no process is in them. The pod's name, "
                    "root, id maps, mounts, network address, limits and services cannot "
                    "change without a restart. Needs root.")
    r.add_argument("name", metavar="NAME", help="a running pod")
    r.add_argument("policy", metavar="POLICY", nargs="?",
                   help="the new policy file (default: the one the pod started from)")
    r.set_defaults(func=reload)


def reload(args) -> int:
    """`pod rules reload NAME [POLICY]`: the daemon checks and applies it."""
    run = args.run
    from pods import control
    from pods.cliout import connect as _connect, err as _err

    if os.geteuid() != 0:
        _err("rules reload needs root (it talks to the pod's daemon)")
        return EXIT_BAD_INPUT
    policy = None
    if args.policy is not None:
        policy = str(Path(args.policy).resolve())
        if _load(args.policy) is None:      # its FILE:LINE problems, printed
            return EXIT_BAD_INPUT
    s = _connect(run, args.name)
    if s is None:
        return EXIT_BAD_INPUT
    try:
        control.send_msg(s, {"op": "reload", "policy": policy})
        s.settimeout(120)
        reply, fds = control.recv_msg(s)
        for fd in fds:
            os.close(fd)
    finally:
        s.close()
    if not reply:
        _err(f"pod {args.name}: its daemon did not answer")
        return 1
    if "error" in reply:
        _err(f"rules reload {args.name}: {reply['error']}")
        return int(reply.get("status", 1))
    parts = [f"pod {args.name} now runs {reply['policy']}"]
    if reply.get("added"):
        parts.append("added peas " + ", ".join(reply["added"]))
    if reply.get("removed"):
        parts.append("removed peas " + ", ".join(reply["removed"]))
    print("; ".join(parts))
    return 0


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


def _suggest_error(message: str) -> int:
    print(f"pod rules suggest: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _log_path(args, policy) -> Path | str:
    """The audit log to read, or why there is none."""
    run = args.run
    from pods import runtime

    if args.log:
        return Path(args.log)
    if args.pod:
        if not runtime.NAME_RE.match(args.pod):
            return f"{args.pod!r} is not a pod name"
        state = run.read_state(args.pod)
        if state is None or "root" not in state:
            return (f"pod {args.pod} is not running; without it give the log with --from, "
                    "or let the policy's root name it")
        return runtime.audit_log(Path(state["root"]))
    return runtime.audit_log(policy.root)


def suggest(args: argparse.Namespace) -> int:
    import datetime

    import rules
    from kernel.text import escape_controls
    from rules import suggest as sg

    try:
        before = Path(args.policy).read_bytes()
    except OSError:
        before = None       # load below says why, in its usual words
    policy = _load(args.policy)
    if policy is None:
        return EXIT_BAD_INPUT
    if args.pea is not None and args.pea not in policy.peas:
        return _suggest_error(f"policy {args.policy} has no pea {args.pea!r} "
                              f"(peas: {', '.join(policy.peas)})")
    log = _log_path(args, policy)
    if isinstance(log, str):
        return _suggest_error(log)
    try:
        data = log.read_text("utf-8", "surrogateescape")
    except FileNotFoundError:
        return _suggest_error(f"no audit log at {log} (run the pod in complain mode first)")
    except IsADirectoryError:
        return _suggest_error(f"{log} is a directory, not an audit log")
    except OSError as e:
        return _suggest_error(f"cannot read {log}: {e.strerror}")
    try:
        records = sg.parse_log(data, str(log))
        sg.check_records(policy, records, str(log), args.policy)
        found = sg.suggest(policy, records, pea=args.pea, min_files=args.min_files)
    except sg.SuggestError as e:
        return _suggest_error(str(e))
    for s in found:
        for note in s.notes:
            print(f"note: pea {s.pea}: {escape_controls(note)}", file=sys.stderr)
    if all(s.empty() for s in found):
        print(f"pod rules suggest: nothing to add: {policy.name}'s policy already allows "
              f"what {log} shows (or no rule should)", file=sys.stderr)
        return 0
    if before is None:
        return _suggest_error(f"cannot read {args.policy}")
    text = before.decode("utf-8")
    today = datetime.date.today().isoformat()
    try:
        new = sg.apply(text, found, today=today, log_name=str(log))
        try:
            edited = rules.loads(new, args.policy, base_dir=Path(args.policy).resolve().parent)
        except rules.PolicyError as e:
            raise sg.SuggestError(f"the edited policy would not load ({e.errors[0]}): "
                                  "add the rules by hand") from None
        sg.verify(policy, edited, found)
    except sg.SuggestError as e:
        return _suggest_error(str(e))
    if not args.write:
        import difflib

        diff = difflib.unified_diff(text.splitlines(keepends=True), new.splitlines(keepends=True),
                                    fromfile=args.policy, tofile=args.policy + " (suggested)")
        # Paths in the diff come from the pod: no terminal escapes through.
        sys.stdout.write(escape_controls("".join(diff)))
        return 0
    return _write(args.policy, before, new)


def _write(shown: str, before: bytes, new: str) -> int:
    """Replace the policy by *new*: a temporary file beside it, renamed over
    it, so a reader (a starting pod) sees the old file or the new one,
    never half; refused if the file changed since it was read."""
    import tempfile

    target = os.path.realpath(shown)       # a link to a policy: write the policy
    try:
        st = os.stat(target)
        if Path(target).read_bytes() != before:
            return _suggest_error(f"{shown} changed while suggestions were made; nothing "
                                  "written (run pod rules suggest again)")
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target),
                                   prefix="." + os.path.basename(target) + ".")
    except OSError as e:
        return _suggest_error(f"cannot write {shown}: {e.strerror}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(new.encode("utf-8"))
            os.fchmod(f.fileno(), stat.S_IMODE(st.st_mode))
            try:
                os.fchown(f.fileno(), st.st_uid, st.st_gid)
            except OSError:
                pass        # not root: the file is ours, as the user's edit would be
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return _suggest_error(f"cannot write {shown}: {e.strerror}")
    print(f"{shown}: rules added (pod rules check {shown} to review)", file=sys.stderr)
    return 0
