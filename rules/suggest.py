"""``pod rules suggest``: the rules that would have allowed what the audit log shows.

Pure: audit records in, proposals out (``suggest``), and the policy text
with the proposals written into it (``apply``). The command
(pods/rules_cmd.py) reads the files, prints the diff and writes.

What is proposed, per pea:

* a file line (kind path/directory/default: a rule decided) that the
  policy still refuses becomes a rule granting the missing letters on the
  exact path, plus what the path already had (a new path-specific rule
  replaces the closer rule for that path only, so it must not take letters
  away); an existing rule whose key is exactly the path is widened in place;
* at least ``min_files`` files directly in one directory become one
  directory-default rule on it, granting the letters any of them needed, unless that rule
  would grant something the log shows refused and not proposed (a "wall":
  a refusal no rule should lift, like a deliberate ``""`` rule or a hard
  link to a file the pea may not touch), or the directory lies under a
  deliberate ``""`` rule; never ``"/"``;
* a refused bind adds the port to ``bind``; refused outgoing connections
  propose ``connect = true``, marked for review.

Never proposed, only reported: refusals by a rule that grants nothing on
purpose (``"/etc/shadow" = ""``; ``"/" = ""`` is the baseline, not one),
refused transitions, the pod-wide
``[pod.net] host = false``, barrier and limit lines, and ``/`` itself (only
the ``"/"`` rule matches it, and that rule grants the whole tree).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

from .lines import _Scanner
from .paths import path_problem, split_path
from .policy import Pea, Policy, normal_perm
from .validate import quote

MIN_FILES = 4
FILE_KINDS = ("path", "directory", "default")


class SuggestError(Exception):
    """Input that cannot be turned into suggestions (one line)."""


@dataclass
class Rule:
    """A proposed files rule: ``key = perm``; ``old`` is the value it
    replaces in place (None: a new key), ``lines`` the audit lines it covers."""

    key: str
    perm: str
    old: str | None = None
    lines: list[int] = field(default_factory=list)
    note: str = ""


@dataclass
class NetChange:
    """A proposed [pea.P.net] value: ``bind`` (list of ports) or ``connect``."""

    key: str
    value: object
    lines: list[int] = field(default_factory=list)
    note: str = ""


@dataclass
class PeaSuggestion:
    pea: str
    rules: list[Rule] = field(default_factory=list)
    net: list[NetChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)     # reported, not proposed
    covered: int = 0                                    # audit lines the proposals cover

    def empty(self) -> bool:
        return not (self.rules or self.net)


# -- reading ---------------------------------------------------------------

def parse_log(text: str, shown: str) -> list[tuple[int, dict]]:
    """(line number, record) of each non-blank line of an audit log."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise SuggestError(f"{shown}:{n}: not an audit line (a JSON object per line)")
        out.append((n, record))
    return out


def check_records(policy: Policy, records, shown: str, policy_shown: str) -> None:
    """SuggestError unless every record is of this pod and names its peas."""
    for n, r in records:
        pod = r.get("pod")
        if pod != policy.name:
            raise SuggestError(f"{shown}:{n}: this is an audit line of pod {pod!r}, but "
                               f"{policy_shown} is the policy of pod {policy.name!r}")
        pea = r.get("pea")
        if pea is not None and pea not in policy.peas:
            raise SuggestError(f"{shown}:{n}: pea {pea!r} is not in {policy_shown} "
                               f"(peas: {', '.join(policy.peas)})")


# -- deciding --------------------------------------------------------------

def spans(lines) -> str:
    """[3, 4, 5, 9] -> "3-5, 9"."""
    lines = sorted(set(lines))
    out = []
    i = 0
    while i < len(lines):
        j = i
        while j + 1 < len(lines) and lines[j + 1] == lines[j] + 1:
            j += 1
        out.append(str(lines[i]) if i == j else f"{lines[i]}-{lines[j]}")
        i = j + 1
    return ", ".join(out)


def _union(*perms: str) -> str:
    return normal_perm("".join(sorted(set("".join(perms)))))


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _deliberate(m) -> bool:
    """A rule of the policy that grants nothing: its author said no. Not
    the root's own ``"/" = ""``: that is the baseline a policy is learned
    from ("deny everything, then learn"), not a word about any one tree."""
    return m.kind in ("path", "directory") and m.perm == "" and m.rule != "/"


def suggest(policy: Policy, records, *, pea: str | None = None,
            min_files: int = MIN_FILES) -> list[PeaSuggestion]:
    """The proposals for each pea in *records* ((line, record) pairs, checked
    by ``check_records``), or only for *pea*."""
    by_pea: dict[str, list] = defaultdict(list)
    general: list[str] = []
    for n, r in records:
        name = r.get("pea")
        if "dropped" in r:
            if name is not None and (pea is None or name == pea):
                by_pea[name].append((n, r))
            continue
        if name is None:
            if pea is None:
                general.append(f"line {n}: {r.get('operation')} {r.get('path')}: the caller was "
                               f"in no pea ({r.get('rule')}); no rule changes that")
            continue
        if pea is None or name == pea:
            by_pea[name].append((n, r))
    out = []
    for name in (pea,) if pea is not None else policy.peas:
        if name not in by_pea:
            continue
        s = _suggest_pea(policy.pea(name), by_pea[name], min_files)
        out.append(s)
    if general and out:
        out[0].notes[:0] = general
    elif general:
        out.append(PeaSuggestion(policy.default_pea, notes=general))
    return out


def _suggest_pea(pe: Pea, records, min_files: int) -> PeaSuggestion:
    s = PeaSuggestion(pe.name)
    want: dict[str, list] = {}          # path -> [missing letters, lines]
    walls: list[tuple[str, str, int]] = []   # (path, letters, line): refused, not proposed
    ports: dict[int, list[int]] = {}
    connect: list[int] = []
    already = []                        # lines the policy allows by now
    for n, r in records:
        if "dropped" in r:
            s.notes.append(f"line {n}: {r['dropped']} refusals were not logged "
                           f"({r.get('why', 'rate limit')}): the log is incomplete")
            continue
        kind, op, path = r.get("kind"), r.get("operation"), r.get("path")
        need = "".join(c for c in "rwx" if c in str(r.get("need") or ""))
        rule = r.get("rule")
        if kind == "net":
            if op == "bind":
                port = _port(path)
                if port is None:
                    s.notes.append(f"line {n}: bind {path}: no port in the address")
                elif port in pe.bind:
                    already.append(n)
                else:
                    ports.setdefault(port, []).append(n)
            elif rule == "connect = false":
                if pe.connect:
                    already.append(n)
                else:
                    connect.append(n)
            else:
                s.notes.append(f"line {n}: {op} to {path} refused by {rule}: the host is out "
                               "of the pod's reach on purpose; set [pod.net] host = true "
                               "yourself if the pod must reach it")
            continue
        if kind not in FILE_KINDS or not isinstance(path, str) or not need:
            if isinstance(path, str) and need:
                walls.append((path, need, n))
            s.notes.append(f"line {n}: {op} {path} refused ({kind}: {rule}): "
                           "not a matter of file rules, not proposed")
            continue
        try:
            m = pe.match(path)
        except ValueError:
            s.notes.append(f"line {n}: {op} {path!r}: not a clean path, not proposed")
            continue
        missing = "".join(c for c in need if c not in m.perm)
        if not missing:
            already.append(n)   # the policy has changed since: it allows this now
            continue
        if _deliberate(m):
            walls.append((path, missing, n))
            s.notes.append(f"line {n}: {op} {path} needs {missing!r}, but the rule "
                           f'{quote(m.rule)} = "" denies it on purpose: not proposed')
            continue
        if path == "/" or path_problem(path) is not None:
            walls.append((path, missing, n))
            why = ("only the \"/\" rule matches / itself, and it would grant the whole tree"
                   if path == "/" else "it cannot be written as a rule key")
            s.notes.append(f"line {n}: {op} {path} needs {missing!r}: {why}; not proposed")
            continue
        entry = want.setdefault(path, ["", []])
        entry[0] = _union(entry[0], missing)
        entry[1].append(n)

    files = dict(pe.files)
    dir_rules = _generalise(pe, want, walls, min_files, s.notes)
    for key, perm in dir_rules.items():
        files[key] = perm
    widened = Pea(pe.name, files=files, exec=pe.exec)
    rules: dict[str, Rule] = {}
    for key, perm in dir_rules.items():
        own = key in pe.files and key not in pe.origins
        rules[key] = Rule(key, perm, pe.files[key] if own else None)
    for path, (missing, lines) in sorted(want.items()):
        m2 = widened.match(path)
        if all(c in m2.perm for c in missing) and m2.rule in rules:
            rules[m2.rule].lines.extend(lines)
            continue
        m = pe.match(path)
        perm = _union(m.perm, missing)
        own = path in pe.files and path not in pe.origins
        rule = Rule(path, perm, pe.files[path] if own else None, list(lines))
        if path in pe.origins:
            rule.note = f"replaces rule set {pe.origins[path]}'s \"{pe.files[path]}\""
        target = pe.transition(path)
        if "x" in missing and target is not None:
            rule.note = (f"executing it moves the process to pea {target}: the transition "
                         f"needs x here")
        rules[path] = rule
    s.rules = sorted(rules.values(), key=lambda r: r.key)
    covered = 0
    for rule in s.rules:
        rule.lines.sort()
        covered += len(rule.lines)
    if already:
        s.notes.append(f"line{'s' if len(already) > 1 else ''} {spans(already)}: "
                       "the policy allows this by now")
    if ports:
        s.net.append(NetChange("bind", sorted(pe.bind) + sorted(ports),
                               sorted(n for ls in ports.values() for n in ls),
                               f"binds port{'s' if len(ports) > 1 else ''} "
                               + ", ".join(map(str, sorted(ports)))))
    if connect:
        s.net.append(NetChange("connect", True, connect,
                               "outgoing connections were refused; review: does this pea "
                               "really call out?"))
    covered += sum(len(c.lines) for c in s.net)
    s.covered = covered
    return s


def _port(address) -> int | None:
    if not isinstance(address, str) or ":" not in address:
        return None
    tail = address.rsplit(":", 1)[1]
    return int(tail) if tail.isdigit() and 1 <= int(tail) <= 65535 else None


def _generalise(pe: Pea, want, walls, min_files: int, notes: list[str]) -> dict[str, str]:
    """Directory-default rules: {"/dir/": perm} (see the module docstring)."""
    if min_files < 1:
        return {}
    kids: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path, (missing, _) in want.items():
        kids[_parent(path)][missing].append(path)
    out = {}
    for directory, groups in sorted(kids.items()):
        if directory == "/":
            continue            # a "/" rule would grant the whole tree
        # The letters of every file in it: a spool directory's files are
        # created ("rw") under names of the moment, renamed ("w") and read
        # ("r") under others, and a second run uses new names, so a rule
        # for only the most common letters fails there. The walls below
        # still keep a deliberate refusal out of the directory rule.
        paths = [p for ps in groups.values() for p in ps]
        if len(paths) < min_files:
            continue
        # Except x: a program is not a spool file. One loader executed in a
        # directory of libraries must not make every library executable;
        # x goes to the directory only when min_files of its files needed it.
        letters = _union(*(lt.replace("x", "") for lt in groups))
        if sum(len(ps) for lt, ps in groups.items() if "x" in lt) >= min_files:
            letters = _union(letters, "x")
        if not letters:
            continue
        inherited = pe.match_parts(split_path(directory) + ("\0",))
        key = directory + "/"
        if _deliberate(inherited):
            notes.append(f'{len(paths)} files in {directory} needed {letters!r}, but '
                         f'{quote(inherited.rule)} = "" denies that tree on purpose: '
                         "not generalised")
            continue
        perm = _union(inherited.perm, letters)
        trial = Pea(pe.name, files={**pe.files, key: perm}, exec=pe.exec)
        breach = [(p, need, n) for p, need, n in walls
                  if p.startswith(key)
                  and any(c in trial.match(p).perm and c not in pe.match(p).perm for c in need)]
        if breach:
            p, need, n = breach[0]
            notes.append(f'"{key}" = "{perm}" not proposed: it would also grant {p}, refused '
                         f"at line {n} and not proposed; exact rules instead")
            continue
        out[key] = perm
    return out


# -- writing ---------------------------------------------------------------

@dataclass
class _Stmt:
    kind: str                 # "table" | "aot" | "key"
    path: tuple               # table: its keys; key: table + key (full path)
    table: tuple              # the table in effect
    line: int                 # first line (1-based)
    end: int                  # last line
    vstart: int = 0           # value span (keys only)
    vend: int = 0


def _statements(text: str) -> list[_Stmt]:
    """Every table header and key=value of a TOML text tomllib accepted."""
    sc = _Scanner(text)
    table: tuple = ()
    out = []
    while True:
        sc.skip_blank(True)
        if sc.pos >= len(text):
            return out
        line = sc.line
        if text.startswith("[[", sc.pos):
            sc.pos += 2
            table = sc.key()
            sc.pos += 2
            out.append(_Stmt("aot", table, table, line, line))
        elif text.startswith("[", sc.pos):
            sc.pos += 1
            table = sc.key()
            sc.pos += 1
            out.append(_Stmt("table", table, table, line, line))
        else:
            keys = sc.key()
            sc.skip_blank(False)
            sc.pos += 1
            sc.skip_blank(False)
            start = sc.pos
            sc.value(table + keys)
            out.append(_Stmt("key", table + keys, table, line, sc.line, start, sc.pos))


def _dotted(keys) -> str:
    from .validate import dotted

    return dotted(tuple(keys))


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return quote(value)


def apply(text: str, suggestions: list[PeaSuggestion], *, today: str,
          log_name: str = "audit.log") -> str:
    """*text* with the proposals written in: values changed in place, new
    keys inserted after the last key of their table (or a new table at the
    end), each line of the original kept. SuggestError if the file's layout
    does not allow it (an inline table)."""
    if not text.endswith("\n"):
        text += "\n"
    stmts = _statements(text)
    starts = [0]
    for i, c in enumerate(text):
        if c == "\n":
            starts.append(i + 1)
    edits: list[tuple[int, int, int, str]] = []   # (pos, order, length to drop, text)
    order = 0
    tail: list[str] = []

    def line_start(line: int) -> int:
        return starts[line - 1] if line - 1 < len(starts) else len(text)

    for s in suggestions:
        if s.empty():
            continue
        header = (f"# pod rules suggest, {today}: pea {s.pea}, covers {s.covered} audit "
                  f"line{'s' if s.covered != 1 else ''} of {log_name}")
        for table, items in (("files", [(r.key, r.perm, r.old is not None, r.lines, r.note)
                                        for r in s.rules]),
                             ("net", [(c.key, c.value, _has(stmts, s.pea, "net", c.key),
                                       c.lines, c.note) for c in s.net])):
            if not items:
                continue
            where = ("pea", s.pea, table)
            for st in stmts:
                if st.kind == "key" and (st.path == where or st.path == where[:2]
                                         or st.path == where[:1]):
                    raise SuggestError(f"[pea.{s.pea}] is written with an inline table "
                                       f"({_dotted(st.path)} = {{...}}, line {st.line}): "
                                       "add the rules by hand")
            keys = [st for st in stmts if st.kind == "key" and st.path[:3] == where
                    and len(st.path) == 4]
            heads = [st for st in stmts if st.kind == "table" and st.path == where]
            new_lines = []
            for key, value, in_place, lines, note in items:
                why = ""
                if len(lines) == 1:
                    why = f"audit line {lines[0]}"
                elif lines:
                    why = f"audit lines {spans(lines)} ({len(lines)})"
                if note:
                    why = f"{why}; {note}" if why else note
                if in_place:
                    st = next(st for st in keys if st.path[3] == key)
                    order += 1
                    edits.append((line_start(st.line), order, 0,
                                  f"# pod rules suggest, {today}: was "
                                  f"{' '.join(text[st.vstart:st.vend].split())}; {why}\n"))
                    order += 1
                    edits.append((st.vstart, order, st.vend - st.vstart, _toml_value(value)))
                else:
                    k = key if table == "net" else quote(key)
                    new_lines.append((k, f"{_toml_value(value)}   # {why}"))
            if not new_lines:
                continue
            if keys or heads:
                last = max(keys or heads, key=lambda st: st.end)
                prefix = last.path[len(last.table):3] if keys else ()
                indent = ""
                if keys:
                    first = text[line_start(last.line):]
                    indent = first[:len(first) - len(first.lstrip(" \t"))]
                block = [indent + header] + [
                    indent + (_dotted(prefix) + "." if prefix else "") + k + " = " + v
                    for k, v in new_lines]
                order += 1
                edits.append((line_start(last.end + 1), order, 0, "\n".join(block) + "\n"))
            else:
                tail.append(f"\n{header}\n[pea.{s.pea}.{table}]\n"
                            + "".join(f"{k} = {v}\n" for k, v in new_lines))
    for pos, _, drop, new in sorted(edits, key=lambda e: (-e[0], -e[1])):
        text = text[:pos] + new + text[pos + drop:]
    return text + "".join(tail)


def _has(stmts, pea: str, table: str, key: str) -> bool:
    return any(st.kind == "key" and st.path == ("pea", pea, table, key) for st in stmts)


def verify(policy: Policy, new: Policy, suggestions: list[PeaSuggestion]) -> None:
    """SuggestError unless *new* (the edited policy, loaded) has exactly the
    rules of *policy* plus the proposals: the text edit is checked, not
    trusted."""
    for s in suggestions:
        old, got = policy.pea(s.pea), new.pea(s.pea)
        want = dict(old.files)
        for r in s.rules:
            want[r.key] = r.perm
        bind, connect = old.bind, old.connect
        for c in s.net:
            if c.key == "bind":
                bind = frozenset(c.value)
            else:
                connect = bool(c.value)
        if dict(got.files) != want or got.bind != bind or got.connect != connect \
                or dict(got.exec) != dict(old.exec):
            raise SuggestError(f"the edited policy does not say what was meant for pea "
                               f"{s.pea} (an unusual layout?): add the rules by hand")
    for name in policy.peas:
        if name not in {s.pea for s in suggestions} and \
                dict(policy.pea(name).files) != dict(new.pea(name).files):
            raise SuggestError(f"the edit changed pea {name}: add the rules by hand")
