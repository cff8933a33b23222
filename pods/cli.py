"""The ``pod`` command: argument parsing and dispatch only.

Each group of subcommands lives in its own module, which registers its
parsers through ``register(subparsers)`` and sets ``func`` on each; the
function returns the exit status. Errors a user can cause are reported as one
line on stderr with a non-zero status, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from pods import rules_cmd

# Modules that contribute subcommands, in the order `pod --help` lists them.
_GROUPS = [rules_cmd]
try:  # lifecycle commands (start, exec, ps, list, stop) arrive with pods/lifecycle_cmd.py
    from pods import lifecycle_cmd

    _GROUPS.append(lifecycle_cmd)
    from pods import service_cmd

    _GROUPS.append(service_cmd)
except ImportError:  # pragma: no cover - only while the module does not exist yet
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pod",
        description="Run services in pods (isolated environments) split into peas "
        "(least-privilege domains).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for group in _GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
