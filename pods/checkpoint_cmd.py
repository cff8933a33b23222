"""`pod checkpoint` and `pod restore` (docs/MIGRATION.md; the work is
pods/checkpoint.py's, in the pod's daemon).

`pod checkpoint NAME DIR` asks NAME's daemon to save the pod into DIR (a
host directory, empty or new) and, unless --leave-running, to stop it.

`pod restore DIR` checks the image (manifest, checksums: pods/ckptimage.py)
before anything is started, writes the image's policy, with --name and
--address applied, to $PEAPOD_RUN/restored/NAME.toml, and starts a pod
from it whose daemon puts the image's processes back before its services
start (`pod start`'s checks apply: a name, root, address or id range taken
is refused). A restore that fails stops the new pod: nothing is left
half-restored.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from pods.cliout import EXIT_FAILED, EXIT_USAGE, connect as _connect, err as _err


def cmd_checkpoint(args) -> int:
    from pods import control

    directory = Path(args.dir).absolute()
    s = _connect(args.run, args.name)
    if s is None:
        return EXIT_USAGE
    try:
        control.send_msg(s, {"op": "checkpoint", "dir": str(directory),
                             "leave_running": args.leave_running})
        s.settimeout(args.timeout)
        reply, fds = control.recv_msg(s)
        for fd in fds:
            os.close(fd)
    except TimeoutError:
        _err(f"checkpoint {args.name}: no answer from its daemon in {args.timeout:g} s")
        return EXIT_FAILED
    finally:
        s.close()
    if not reply:
        _err(f"pod {args.name}: its daemon did not answer (see its log)")
        return EXIT_FAILED
    if "error" in reply:
        _err(f"checkpoint {args.name}: {reply['error']}")
        return int(reply.get("status", EXIT_FAILED))
    if args.json:
        print(json.dumps(reply))
    else:
        print(f"{directory}: {reply['trees']} process tree(s), {reply['bytes'] // 1024} KiB "
              f"in {reply['seconds']:.2f} s; pod {args.name} "
              f"{'stopped' if reply['stopped'] else 'still running'}")
    return 0


# [pod] name = "..." and [pod.net] address = "..." lines of the saved policy.
_KEY = r'^(\s*{key}\s*=\s*)"[^"\n]*"(.*)$'


def _set_key(text: str, table: str, key: str, value: str) -> str | None:
    """The policy text with ``key`` of ``[table]`` set to ``value``, or None
    if the table has no such line. The policy is the image's own copy,
    which `pod start` validated; the result is validated again."""
    out, current, done = [], None, False
    for line in text.splitlines(keepends=True):
        head = re.match(r"^\s*\[\s*([^\]\s]+)\s*\]", line)
        if head and not line.lstrip().startswith("[["):
            current = head.group(1)
        elif line.lstrip().startswith("[["):
            current = None
        m = re.match(_KEY.format(key=re.escape(key)), line.rstrip("\n"))
        if current == table and m and not done:
            line = m.group(1) + json.dumps(value) + m.group(2) + ("\n" if line.endswith("\n") else "")
            done = True
        out.append(line)
    return "".join(out) if done else None


def cmd_restore(args) -> int:
    from pods import checkpoint, lifecycle_cmd

    try:
        d, meta = checkpoint.read_image(args.dir)
        text = (d / checkpoint.POLICY).read_text()
    except checkpoint.CheckpointError as e:
        _err(f"restore: {e}")
        return EXIT_USAGE
    except (OSError, UnicodeDecodeError) as e:
        _err(f"restore: {args.dir}: {getattr(e, 'strerror', None) or e}")
        return EXIT_USAGE
    name = args.name or meta.get("pod")
    # The policy moves to $PEAPOD_RUN/restored: a root relative to the
    # policy's own directory is made absolute (the staging directory the
    # checkpoint was taken on).
    root = str(Path(args.root).absolute()) if args.root is not None else meta.get("root")
    if isinstance(root, str):
        text = _set_key(text, "pod", "root", root)
    if text is not None and args.name is not None:
        text = _set_key(text, "pod", "name", args.name)
    if text is not None and args.address is not None:
        text = _set_key(text, "pod.net", "address", args.address)
        if text is None:
            _err("restore: --address: the image's pod has no [pod.net] address")
            return EXIT_USAGE
    if text is None:
        _err(f"restore: {d / checkpoint.POLICY}: no root or name line in its [pod] table")
        return EXIT_USAGE
    where = args.run.path / "restored"
    where.mkdir(parents=True, exist_ok=True)
    os.chmod(where, 0o700)
    policy = where / f"{name}.toml"
    tmp = policy.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, policy)
    args.foreground = False
    return lifecycle_cmd.start(args, str(policy), restore=str(d))


def register(sub) -> None:
    p = sub.add_parser("checkpoint", help="save a running pod's processes into a directory",
                       description="Save pod NAME (its services' processes, with what its "
                       "daemon holds) into DIR, a new or empty host directory; then stop the "
                       "pod, unless --leave-running. docs/MIGRATION.md.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--leave-running", action="store_true", help="the pod goes on afterwards")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for the daemon (default 300)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_checkpoint)

    p = sub.add_parser("restore", help="start a pod from a checkpoint",
                       description="Start the pod saved in DIR by `pod checkpoint`, its "
                       "processes where they were; prints its name.")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--name", help="the restored pod's name (default: the saved pod's)")
    p.add_argument("--address", help="its [pod.net] address (default: the saved one)")
    p.add_argument("--root", help="its staging directory (default: the one the checkpoint was "
                   "taken on): a copy of it, made while no pod ran on it")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for the pod to run (default 120)")
    p.set_defaults(func=cmd_restore)
