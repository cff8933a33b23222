"""The ``pod`` command: argument parsing and dispatch only.

Each group of subcommands lives in its own module, which registers its
parsers through ``register(subparsers)`` and sets ``func`` on each; the
function returns the exit status. Errors a user can cause are reported as one
line on stderr with a non-zero status, never a traceback. What every command
gets here, before and around its function:

- a NAME (the ``name`` argument of any command) that is not a pod name: one
  line stating the rule, exit 2 (a name becomes a path component under
  $PEAPOD_RUN/pods);
- a user other than root: one line, exit 2, for every command but those of
  NO_ROOT_NEEDED (a new command needs root unless it is listed there);
- a closed standard output (``pod list | head -1``): one line, exit 2;
- any other OSError that escapes a command: one line naming the command and
  the error, exit 1;
- ``args.run``: the run directory (pods/runtime.py RunDir), from $PEAPOD_RUN
  (default /run/peapod), read here and nowhere else: every command and
  library call below takes it from ``args.run`` or as an argument.

Exit statuses: 0 success; 1 an operation failed; 2 refused (usage, bad
name, not root, pod not running, output closed); 130 interrupted. `pod exec`
exits with its command's status instead (125 and up for its own failures).
"""

from __future__ import annotations

import argparse
import os
import select
import sys

from kernel import names, rundir
from kernel.text import one_line, shown
from pods import runtime
from pods.cliout import EXIT_FAILED, EXIT_USAGE, err as _err

# Modules that contribute subcommands, in the order `pod --help` lists them
# (imported by build_parser: `pod exec` needs none of them, only pods/exec_cmd.py).
_GROUPS = ["pods.rules_cmd", "pods.lifecycle_cmd", "pods.service_cmd", "pods.checkpoint_cmd"]

# Commands any user may run: the policy tools read files and print. Every
# other command creates or reads namespaces, cgroups, mounts and the root-only
# $PEAPOD_RUN, and without root would fail halfway with a PermissionError, or
# worse answer "pod X is not running" about a pod it merely cannot see.
NO_ROOT_NEEDED = {"rules"}

NAME_RULE = ("a pod name is a lowercase letter, then at most 30 lowercase letters, "
             "digits and '-'")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser tree (pods/docgen.py walks it), or with ``command
    == "exec"`` the tree with that subcommand alone: what `pod exec` parses
    (argparse hands every word after "exec" to its parser, so its --help and
    errors are the same), without importing or building the others."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="pod",
        description="Run services in pods (isolated environments) split into peas "
        "(least-privilege domains).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    if command == "exec":
        from pods import exec_cmd

        exec_cmd.register_exec(sub)
        return parser
    for group in _GROUPS:
        importlib.import_module(group).register(sub)
    return parser


def _stdout_closed() -> bool:
    """Has the reader of standard output gone (a pipe or socket whose other
    end is closed reports POLLERR or POLLHUP on our end)?"""
    try:
        p = select.poll()
        p.register(sys.stdout.fileno(), 0)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in p.poll(0))
    except (OSError, ValueError):
        return False


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null, so that the interpreter's flush of what is
    still buffered at exit does not fail a second time (the recipe of the
    Python docs for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Pod-made text (command lines, paths) in a non-UTF-8 locale: escaped,
    # not a UnicodeEncodeError in the middle of a table.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):
            pass
    parser = build_parser("exec" if argv[:1] == ["exec"] else None)
    tail = None
    if argv[:1] == ["exec"]:
        # Everything after NAME (and exec's own options) is the command:
        # argparse would take its options (ls -ld) for exec's.
        from pods import exec_cmd

        argv, tail = exec_cmd.split_exec_argv(argv)
    args = parser.parse_args(argv)
    if tail is not None:
        args.cmd = tail
    args.run = runtime.RunDir(rundir.run_dir_from(os.environ))   # the one read of $PEAPOD_RUN
    command = args.command
    name = getattr(args, "name", None)
    if name is not None and not names.NAME_RE.match(name):
        _err(f"{command}: invalid pod name {shown(name)}: {NAME_RULE}")
        return EXIT_USAGE
    if command not in NO_ROOT_NEEDED and os.geteuid() != 0:
        _err(f"{command} needs root (pods use namespaces, cgroups and mounts)")
        return EXIT_USAGE
    try:
        status = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe can still be reported
        return status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        if not _stdout_closed():
            # A socket or pipe of the command's own (the daemon went away).
            _err(f"{command}: Broken pipe")
            return EXIT_FAILED
        _silence_stdout()
        _err(f"{command}: output closed before it was complete (broken pipe)")
        return EXIT_USAGE
    except OSError as e:
        # Last resort: an error no command foresaw (a permission, a full
        # disk). One line: the command and the system's words, not Python's.
        what = f"{os.fsdecode(e.filename)}: " if e.filename is not None else ""
        _err(f"{command}: {one_line(what)}{e.strerror or e}")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
