"""`pod exec`: run a command in a running pod, as the daemon's client.

The `pod` command is a C front (pods/pod_front.c) that runs the plain
exec itself; this client runs what it hands on: a terminal on stdin, a
user given by name, and every usage error.

Its own module, importing only what the client needs (the control
protocol, the run directory, kernel/text.py): pods/cli.py builds exec's
parser alone when the command is exec, so `pod exec` connects to the
daemon without loading the other commands (python -X importtime -m
pods.cli exec NAME true). The daemon's side is pods/daemon.py (``_exec``)
and the pod's fork server, pods/tagger.py.
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
from pathlib import Path

from kernel.text import one_line
from pods import control
from pods.cliout import EXIT_USAGE, connect as _connect, err as _err


def _winsize(fd: int) -> list[int]:
    import termios

    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
        return [rows, cols]
    except OSError:
        return [0, 0]


FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)


# exec's own options. Each takes a value; they go before NAME or right after
# it, and the first other word after NAME (or the word after "--") starts the
# command, so that `pod exec NAME ls -ld /` runs `ls -ld /`.
EXEC_OPTIONS = ("--pea", "--user")


def split_exec_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split `pod exec ...` (argv[0] == "exec") into what argparse parses
    (exec, its options, NAME) and the command. Words starting with "-"
    before the command are left to argparse, which refuses unknown ones: a
    mistyped option is an error, not a command to run."""
    head = [argv[0]]
    i, named = 1, False
    while i < len(argv):
        word = argv[i]
        if word == "--":
            if not named and i + 1 < len(argv):
                head += argv[i:i + 2]      # `pod exec -- NAME CMD...`
                i += 1
            i += 1
            break
        if word in EXEC_OPTIONS:
            head += argv[i:i + 2]
            i += 2
        elif word.startswith("-") and word != "-":
            head.append(word)
            i += 1
        elif not named:
            head.append(word)
            named = True
            i += 1
        else:
            break
    return head, argv[i:]


def passwd_user(root: Path, user: str) -> tuple[int, int] | str:
    """(uid, gid) of ``user`` in the pod's /etc/passwd, or why not."""
    from pods import podusers

    try:
        return podusers.lookup(root, user)
    except podusers.UserError as e:
        return str(e)


def cmd_exec(args) -> int:
    run = args.run
    argv = list(args.cmd)
    if not argv:
        _err("exec: no command given")
        return EXIT_USAGE
    s = _connect(run, args.name)
    if s is None:
        return EXIT_USAGE
    uid = gid = None
    if args.user is not None:
        if args.user.isascii() and args.user.isdigit():
            uid = int(args.user)   # a number: the daemon picks the group, as before
        else:
            root = (run.read_state(args.name) or {}).get("root")
            found = passwd_user(Path(root), args.user) if root else \
                f"pod {args.name} has no root in its state"
            if isinstance(found, str):
                s.close()
                _err(f"exec: {found}")
                return EXIT_USAGE
            uid, gid = found
    is_tty = os.isatty(0)
    msg = {"op": "exec", "argv": argv, "pea": args.pea, "uid": uid, "tty": is_tty,
           "winsize": _winsize(0) if is_tty else None, "term": os.environ.get("TERM", "")}
    if gid is not None:
        msg["gid"] = gid
    saved = None
    old_handlers = {}
    try:
        control.send_msg(s, msg, [0, 1, 2])
        if is_tty:
            import termios
            import tty

            saved = termios.tcgetattr(0)
            tty.setraw(0)

        def forward(signum, _frame):
            try:
                control.send_msg(s, {"op": "signal", "sig": signum})
            except OSError:
                pass

        def resize(_signum, _frame):
            rows, cols = _winsize(0)
            try:
                control.send_msg(s, {"op": "winsize", "rows": rows, "cols": cols})
            except OSError:
                pass

        for sig in FORWARDED:
            old_handlers[sig] = signal.signal(sig, forward)
        if is_tty:
            old_handlers[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, resize)
        while True:
            try:
                reply, fds = control.recv_msg(s)
            except InterruptedError:
                continue
            for fd in fds:
                os.close(fd)
            if reply is None:
                _err(f"pod {args.name}: the daemon closed the connection")
                return 125
            if "error" in reply:
                if saved is not None:
                    termios.tcsetattr(0, termios.TCSADRAIN, saved)
                    saved = None
                _err(f"exec {one_line(argv[0])}: {one_line(str(reply['error']))}")
                return int(reply.get("status", 126))
            if "exit" in reply:
                return int(reply["exit"])
    finally:
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        s.close()


def register_exec(sub) -> None:
    """`pod exec` alone: pods/cli.py builds only this parser when the
    command is exec (its --help and errors are the same: argparse hands the
    words after "exec" to this parser either way)."""
    # allow_abbrev off: split_exec_argv knows the options by their full
    # names only, and "--pe" must not pass it as an option with no value.
    p = sub.add_parser("exec", help="run a command in a running pod", allow_abbrev=False,
                       usage="pod exec [--pea PEA] [--user USER] NAME [--pea PEA] "
                             "[--user USER] [--] CMD [ARG...]",
                       description="Run CMD in pod NAME, in a pea, as a pod user; exits with "
                                   "CMD's status (128+N if a signal N ended it). A pty is "
                                   "allocated when stdin is a terminal. exec's options go "
                                   "before NAME or right after it; the first other word "
                                   "after NAME, or the word after --, is CMD, and everything "
                                   "after CMD is its arguments.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--pea", help="pea to run in (default: the policy's default_pea)")
    p.add_argument("--user", metavar="USER",
                   help="pod user: a number, or a name of the pod's /etc/passwd (its uid "
                        "and gid); default 0")
    p.set_defaults(func=cmd_exec, cmd=[])
