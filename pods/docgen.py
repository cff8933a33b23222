"""Man pages and bash completion, generated from the argparse parsers.

    python -m pods.docgen man pod [-o FILE]          pod(1) in roff
    python -m pods.docgen man peafs [-o FILE]        peafs(1)
    python -m pods.docgen completion pod [-o FILE]   bash completion for pod

`make man` and `make completion` run this at build time, so a subcommand or
an option added to a parser appears in both without touching this file: the
parsers are walked generically (every action of every subparser, nested
groups such as `pod rules` included), and nothing here lists subcommands.
What a parser cannot say (exit statuses, files, environment) is the per-
program text in PAGES.

It lives in the package rather than in a tools/ script because it must
describe the parsers of the code it ships with: `python -m pods.docgen` run
from a checkout imports that checkout's pods and peafs, and the tests import
it directly. It uses argparse internals (``_actions``, ``_choices_actions``,
``_SubParsersAction``), as every argparse-to-man tool does: argparse has no
public API for walking its parsers.

Completion follows the names the parsers already use: an argument whose
metavar is NAME completes the running pods (directories under
${PEAPOD_RUN:-/run/peapod}/pods), POLICY completes *.toml files (and
directories to reach them), NAME|POLICY both; an argument with choices
completes them; any other positional completes file names, any other option
value nothing.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import sys
import tempfile
from dataclasses import dataclass, field

EXIT_USAGE = 2

# The parsers this module knows, by program name: (module, function).
PARSERS = {"pod": ("pods.cli", "build_parser"), "peafs": ("peafs.cli", "parser")}

# What argparse cannot tell: per-program sections of the man page. Each is a
# list of (tag, text) pairs (a .TP list) or a string (one paragraph); the
# order of the keys is the order of the sections.
PAGES = {
    "pod": {
        "EXIT STATUS": [
            ("0", "success"),
            ("1", "failure: the command could not do what was asked (a lock held too "
                  "long, a pod that could not be cleaned up completely)"),
            ("2", "bad input: a usage error, an invalid policy (every problem printed as "
                  "FILE:LINE: message), a pod that is not running, a start that was refused"),
            ("125", "pod exec: the pod's daemon closed the connection (the pod stopped or "
                    "failed under the command)"),
            ("126", "pod exec: CMD could not be run (refused, not executable)"),
            ("127", "pod exec: CMD was not found"),
            ("other", "pod exec: CMD's own exit status, or 128+N when signal N ended it"),
        ],
        "ENVIRONMENT": [
            ("PEAPOD_RUN", "directory of the runtime state of running pods (default "
                           "/run/peapod); every pod command of one host must use the same"),
        ],
        "FILES": [
            ("$PEAPOD_RUN/start.lock", "held by pod start while it checks and starts a pod"),
            ("$PEAPOD_RUN/pods/NAME/", "a running pod (mode 0700; removed by pod stop): lock "
                                       "(held by the pod's daemon for its whole life), "
                                       "state.json, control (the daemon's socket), daemon.log, "
                                       "init.log (output of the policy's init), mnt/ (the "
                                       "pod's PeaFS mount point)"),
            ("ROOT.peapod/audit.log", "beside the pod's root directory ROOT: every refusal, "
                                      "one JSON object per line; kept after pod stop"),
            ("ROOT.peapod/links.json", "the rules of hard links made in the pod, kept across "
                                       "restarts"),
            ("/etc/peapod/NAME.toml", "the policy the systemd unit peapod@NAME.service "
                                      "starts (see README.md, Running a pod as a service)"),
        ],
        "SEE ALSO": "peafs(1), systemd.service(5); docs/FORMAT.md (the policy file), "
                    "docs/SECURITY.md and docs/ARCHITECTURE.md in the source tree",
    },
    "peafs": {
        "EXIT STATUS": [
            ("0", "success"),
            ("1", "failure"),
            ("2", "bad input: a usage error or an invalid policy"),
            ("other", "peafs run: CMD's own exit status, or 128+N when signal N ended it"),
        ],
        "ENVIRONMENT": [
            ("PEAPOD_RUN", "directory of the runtime state (default /run/peapod)"),
        ],
        "FILES": [
            ("$PEAPOD_RUN/peafs/POD/mount.json", "the live mount (removed by peafs umount)"),
            ("$PEAPOD_RUN/peafs/POD/audit.log", "every refusal, one JSON object per line"),
            ("$PEAPOD_RUN/peafs/POD/links.json", "the rules of hard links, kept across mounts"),
            ("$PEAPOD_RUN/peafs/POD/daemon.log", "the file system daemon's stderr"),
        ],
        "SEE ALSO": "pod(1); docs/FORMAT.md (the policy file) in the source tree",
    },
}

# Completion kinds by metavar (see the module docstring).
KINDS = {"NAME": "pods", "POLICY": "toml"}
# The words of the man page for those metavars when a parser gives no help.
DEFAULT_HELP = {"NAME": "the name of a running pod", "POLICY": "a policy file (TOML)"}


def load_parser(prog: str) -> argparse.ArgumentParser:
    import importlib

    module, func = PARSERS[prog]
    return getattr(importlib.import_module(module), func)()


# ------------------------------------------------------------------ the walk

@dataclass
class Arg:
    """One action of a parser, as the man page and the completion need it."""
    options: list[str]        # option strings; empty for a positional
    metavar: str              # NAME, POLICY, {a,b}, ...
    nargs: object             # argparse's nargs (0 for flags)
    help: str                 # expanded help, "" if none
    required: bool
    choices: list[str] | None


@dataclass
class Command:
    path: list[str]                       # [] for the program itself, ["rules", "check"]
    parser: argparse.ArgumentParser
    help: str                             # the one-line help its parent lists
    args: list[Arg] = field(default_factory=list)
    subs: list[Command] = field(default_factory=list)


def _metavar(action: argparse.Action) -> str:
    if isinstance(action.metavar, tuple):
        return " ".join(action.metavar)
    if action.metavar is not None:
        return action.metavar
    if action.choices is not None:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest if not action.option_strings else action.dest.upper()


def _expand(text: str | None, params: dict) -> str:
    """argparse's %-expansion of help and descriptions (%(prog)s, %(default)s)."""
    if not text or text == argparse.SUPPRESS:
        return ""
    if "%" in text:
        try:
            return text % params
        except (KeyError, ValueError, TypeError):
            return text
    return text


def walk(parser: argparse.ArgumentParser, path: list[str] | None = None,
         help: str = "") -> Command:
    """The command tree of *parser*: every argument and subcommand, in order."""
    cmd = Command(path or [], parser, help)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:         # an alias: documented under its first name
                    continue
                seen.add(id(sub))
                cmd.subs.append(walk(sub, cmd.path + [name], helps.get(name, "")))
            continue
        if action.help == argparse.SUPPRESS:
            continue
        params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
        params["prog"] = parser.prog
        if action.choices is not None:
            params["choices"] = ", ".join(map(str, action.choices))
        cmd.args.append(Arg(
            options=list(action.option_strings), metavar=_metavar(action),
            nargs=action.nargs, help=_expand(action.help, params),
            required=bool(action.required),
            choices=[str(c) for c in action.choices] if action.choices is not None else None))
    return cmd


def commands(cmd: Command):
    """*cmd* and every command below it, depth first (the order of --help)."""
    yield cmd
    for sub in cmd.subs:
        yield from commands(sub)


# ------------------------------------------------------------------ roff

def esc(text: str) -> str:
    """Text -> roff: backslashes, quotes that would become typographic ones,
    dashes of options as minus signs (so a copied `--pea` still works), and a
    \\& before a line that would otherwise start with a control character."""
    text = text.replace("\\", "\\e").replace("'", "\\(aq").replace("`", "\\(ga")
    text = re.sub(r"(?<![\w.])-", r"\\-", text)
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line
                     for line in text.split("\n"))


def _b(text: str) -> str:
    return f"\\fB{esc(text)}\\fR"


def _i(text: str) -> str:
    return f"\\fI{esc(text)}\\fR"


def _arg_words(arg: Arg) -> str:
    """NAME, [NAME], NAME..., CMD... as roff (italic metavars)."""
    m = _i(arg.metavar)
    n = arg.nargs
    if n == 0:
        return ""
    if n is None:
        return m
    if n == argparse.OPTIONAL:
        return f"[{m}]"
    if n == argparse.ZERO_OR_MORE:
        return f"[{m}...]"
    if n == argparse.ONE_OR_MORE:
        return f"{m}..."
    if n == argparse.REMAINDER:
        return "..."
    if isinstance(n, int):
        return "\\ ".join([m] * n)
    return m


def synopsis(cmd: Command, prog: str) -> str:
    """One synopsis line: bold words typed as is, italic ones replaced, and
    unbreakable spaces inside each [group] so a line never breaks inside one."""
    if cmd.parser.usage:                 # a parser that writes its own usage keeps it
        usage = cmd.parser.usage % {"prog": cmd.parser.prog}
        head = " ".join([prog] + cmd.path)
        rest = usage[len(head):] if usage.startswith(head) else " " + usage
        return _b(head) + esc(rest)
    words = [_b(" ".join([prog] + cmd.path))]
    for arg in cmd.args:
        if not arg.options or _is_help(arg):
            continue
        word = _b(arg.options[0])
        if arg.nargs != 0:
            word += "\\ " + _arg_words(arg)
        words.append(word if arg.required else f"[{word}]")
    for arg in cmd.args:
        if not arg.options:
            words.append(_arg_words(arg))
    if cmd.subs:
        words.append(_i("SUBCOMMAND") + " ...")
    return " ".join(w for w in words if w)


def _is_help(arg: Arg) -> bool:
    return "--help" in arg.options


def _tp(tag: str, text: str) -> list[str]:
    return [".TP", tag] + ([esc(text)] if text else [])


def _arg_tag(arg: Arg) -> str:
    if not arg.options:
        # An item's tag names the argument; the synopsis shows it optional.
        return _i(arg.metavar) if arg.nargs == argparse.OPTIONAL else _arg_words(arg)
    value = "" if arg.nargs == 0 else " " + _arg_words(arg)
    return ", ".join(_b(o) for o in arg.options) + value


def _paragraphs(text: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", text.strip()):
        if para.strip():
            out += [".PP", esc(" ".join(para.split()))]
    return out


def man_page(parser: argparse.ArgumentParser, prog: str | None = None,
             date: str | None = None, version: str | None = None) -> str:
    prog = prog or parser.prog
    top = walk(parser)
    extra = PAGES.get(prog, {})
    if date is None:
        # SOURCE_DATE_EPOCH: the same sources give the same page (reproducible builds)
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        when = (datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc)
                if epoch and epoch.isdigit() else datetime.datetime.now(datetime.timezone.utc))
        date = when.strftime("%Y-%m-%d")
    if version is None:
        version = _version()
    summary = " ".join(_expand(parser.description, {"prog": prog}).split())
    lines = [
        f'.\\" Generated from the argparse parser of {prog} by `python -m pods.docgen man '
        f'{prog}`.',
        '.\\" Do not edit: change the parser and rebuild (make man).',
        f'.TH {prog.upper()} 1 "{date}" "peapod {version}" "Pea-Pod manual"',
        ".SH NAME",
        f"{esc(prog)} \\- {esc(_first_sentence(summary))}",
        ".SH SYNOPSIS",
        ".nh",        # no hyphenation inside option names and metavars
        ".ad l",
    ]
    leaves = [c for c in commands(top) if c.path and not c.subs]
    for i, cmd in enumerate(leaves):
        lines += ([] if i == 0 else [".br"]) + [synopsis(cmd, prog)]
    lines += [".ad", ".hy", ".SH DESCRIPTION"] + _paragraphs(summary)
    top_opts = [a for a in top.args if a.options]
    if top_opts:
        lines += [".SH OPTIONS"]
        for arg in top_opts:
            lines += _tp(_arg_tag(arg), arg.help)
        if top.subs:
            lines += [".PP", f"Every command accepts {_b('-h')}, {_b('--help')}: "
                      + esc("print its usage and options, and exit.")]
    if top.subs:
        lines.append(".SH COMMANDS")
    for cmd in commands(top):
        if not cmd.path:
            continue
        lines += [f'.SS "{esc(" ".join([prog] + cmd.path))}"', ".nh", ".ad l",
                  synopsis(cmd, prog), ".ad", ".hy"]
        description = _expand(cmd.parser.description, {"prog": cmd.parser.prog}) or cmd.help
        lines += _paragraphs(description)
        # positionals first, then options, as --help lists them
        args = [a for a in cmd.args if not a.options] + \
               [a for a in cmd.args if a.options and not _is_help(a)]
        for arg in args:
            lines += _tp(_arg_tag(arg), arg.help or DEFAULT_HELP.get(arg.metavar, ""))
        if cmd.subs:
            lines += [".PP", esc("SUBCOMMAND is one of: ")
                      + ", ".join(_b(s.path[-1]) for s in cmd.subs) + "."]
        if cmd.parser.epilog:
            lines += _paragraphs(_expand(cmd.parser.epilog, {"prog": cmd.parser.prog}))
    for section, body in extra.items():
        lines.append(f".SH {section}")
        if isinstance(body, str):
            lines.append(esc(body))
        else:
            for tag, text in body:
                lines += _tp(_b(tag), text)
    return "\n".join(lines) + "\n"


def _first_sentence(text: str) -> str:
    head = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
    return head.rstrip(".") or text


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("peapod")
    except metadata.PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------ bash completion

def _kind(arg: Arg) -> str:
    """What completes this argument: "pods", "toml", "files", "none",
    "words:a|b|c", or several joined by commas."""
    if arg.choices is not None:
        return "words:" + "|".join(arg.choices)
    kinds = [KINDS[m] for m in arg.metavar.split("|") if m in KINDS]
    if kinds:
        return ",".join(kinds)
    return "none" if arg.options else "files"


def _positional_kinds(cmd: Command) -> list[str]:
    """One kind per positional word; a trailing * repeats the last one."""
    out = []
    for arg in cmd.args:
        if arg.options:
            continue
        kind, n = _kind(arg), arg.nargs
        if n in (argparse.ZERO_OR_MORE, argparse.ONE_OR_MORE, argparse.REMAINDER):
            out.append(kind + "*")
            break                          # nothing after it can be told apart
        out += [kind] * (n if isinstance(n, int) else 1)
    return out


def completion(parser: argparse.ArgumentParser, prog: str | None = None) -> str:
    prog = prog or parser.prog
    fn = "_" + re.sub(r"\W", "_", prog)
    cases = []
    for cmd in commands(walk(parser)):
        opts = [o for a in cmd.args for o in a.options]
        vopts = [f"{o}={_kind(a)}" for a in cmd.args if a.options and a.nargs != 0
                 for o in a.options]
        cases.append(
            f"    {shlex.quote(' '.join(cmd.path))})\n"
            f"        subs={shlex.quote(' '.join(s.path[-1] for s in cmd.subs))}\n"
            f"        opts={shlex.quote(' '.join(opts))}\n"
            f"        vopts={shlex.quote(' ' + ' '.join(vopts) + ' ')}\n"
            f"        pos={shlex.quote(' '.join(_positional_kinds(cmd)))} ;;")
    return _BASH.format(prog=prog, fn=fn, cases="\n".join(cases))


# {fn}_spec sets, for a subcommand path ("" for the program itself): subs, its
# subcommands; opts, its options; vopts, " OPT=KIND ..." for the options that
# take a value; pos, the kind of each positional (a trailing * repeats).
_BASH = r"""# bash completion for {prog}, generated from its argparse parser by
#   python -m pods.docgen completion {prog}
# Do not edit: change the parser and rebuild (make completion).

{fn}_spec() {{
    case $1 in
{cases}
    *) subs= opts= vopts=' ' pos= ;;
    esac
}}

# Append to COMPREPLY the completions of $2 for kind(s) $1 (comma-separated).
{fn}_values() {{
    local kind d names=()
    for kind in ${{1//,/ }}; do
        case $kind in
        pods)   # the running pods: one directory each under $PEAPOD_RUN/pods
            for d in "${{PEAPOD_RUN:-/run/peapod}}"/pods/*/; do
                [[ -d $d ]] || continue
                d=${{d%/}}
                names+=("${{d##*/}}")
            done
            mapfile -t -O "${{#COMPREPLY[@]}}" COMPREPLY < <(compgen -W "${{names[*]}}" -- "$2") ;;
        toml)   # policy files, and directories to reach them
            compopt -o filenames 2>/dev/null
            mapfile -t -O "${{#COMPREPLY[@]}}" COMPREPLY \
                < <(compgen -f -X '!*.toml' -- "$2"; compgen -d -- "$2") ;;
        files)
            compopt -o filenames 2>/dev/null
            mapfile -t -O "${{#COMPREPLY[@]}}" COMPREPLY < <(compgen -f -- "$2") ;;
        words:*)
            mapfile -t -O "${{#COMPREPLY[@]}}" COMPREPLY \
                < <(compgen -W "${{kind#words:}}" -- "$2" | tr '|' '\n') ;;
        esac
    done
}}

{fn}() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} path= subs opts vopts pos
    local i w kind= n=0 rest=0 kinds
    COMPREPLY=()
    {fn}_spec ''
    # Walk the words before the cursor: subcommands narrow the spec, options
    # are skipped with their value, the other words count as positionals.
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${{COMP_WORDS[i]}}
        if [[ -n $kind ]]; then           # the value of the option before
            [[ $w == = ]] || kind=        # (--opt=value is split into 3 words)
            continue
        fi
        if ((!rest)) && [[ $w == -- ]]; then
            rest=1
            continue
        fi
        if ((!rest)) && [[ $w == -* ]]; then
            if [[ $w != *=* && $vopts == *" $w="* ]]; then
                kind=${{vopts#*" $w="}}
                kind=${{kind%% *}}
            fi
            continue
        fi
        if [[ -n $subs && " $subs " == *" $w "* ]]; then
            path=${{path:+$path }}$w
            {fn}_spec "$path"
            n=0
            continue
        fi
        n=$((n + 1))
    done
    if [[ -n $kind ]]; then
        [[ $cur == = ]] && cur=
        {fn}_values "$kind" "$cur"
        return 0
    fi
    if ((!rest)) && [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$opts" -- "$cur")
        return 0
    fi
    if [[ -n $subs ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$subs" -- "$cur")
        return 0
    fi
    read -ra kinds <<< "$pos"
    if ((n < ${{#kinds[@]}})); then
        kind=${{kinds[n]}}
    elif ((${{#kinds[@]}})) && [[ ${{kinds[-1]}} == *'*' ]]; then
        kind=${{kinds[-1]}}
    fi
    kind=${{kind%'*'}}
    [[ -n $kind ]] && {fn}_values "$kind" "$cur"
    return 0
}}

complete -F {fn} {prog}
"""


# ------------------------------------------------------------------ command line

def _write(text: str, out: str | None) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    # Through a temporary file and a rename: a failed run never leaves a
    # half-written page that make would then take for up to date.
    directory = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".docgen-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pods.docgen",
        description="Generate a man page or a bash completion script from a parser.")
    p.add_argument("what", choices=["man", "completion"])
    p.add_argument("prog", choices=sorted(PARSERS), metavar="PROG",
                   help="the program: " + ", ".join(sorted(PARSERS)))
    p.add_argument("-o", "--output", metavar="FILE", help="write FILE (default: stdout)")
    args = p.parse_args(argv)
    parser = load_parser(args.prog)
    text = man_page(parser, args.prog) if args.what == "man" else completion(parser, args.prog)
    try:
        _write(text, args.output)
    except OSError as e:
        print(f"docgen: {args.output}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
