"""Syntax of the paths a policy names (rules, mounts, programs).

A rule path must name exactly one place in the pod's tree, spelled one way:
absolute, no "." or ".." (the rule would silently apply somewhere else, or
never), no empty component ("//"), no NUL or control character (a C string
ends at NUL; a newline in a path hides in logs), no component ending in white
space (invisible in an editor: "/etc/shadow " is not "/etc/shadow"). PeaFS
compares components byte for byte, so a rule must be written the same way.
"""

from __future__ import annotations

import re

NAME_MAX = 255    # bytes in one component (Linux NAME_MAX)
PATH_MAX = 4095   # bytes in a path, without the final NUL (Linux PATH_MAX - 1)


# A clean path, for the fast path of path_problem (a policy of 100 000 rules
# checks 100 000 paths): components that are not "." or "..", hold no "/" or
# control character and do not end in white space (\s is str.isspace), and
# an optional trailing slash.
_COMPONENT = r"(?!\.\.?(?:/|\Z))[^/\x00-\x1f\x7f]*[^/\s\x00-\x1f\x7f]"
_CLEAN = re.compile(rf"/|(?:/{_COMPONENT})+/?")


def path_problem(path: str) -> str | None:
    """Why *path* is not a clean absolute path, or None.

    A single trailing slash is allowed (the caller decides what it means);
    the path "/" is clean.
    """
    # Short ASCII paths have short components: only the syntax to check.
    if len(path) <= NAME_MAX and path.isascii() and _CLEAN.fullmatch(path):
        return None
    return explain_path(path)


def explain_path(path: str) -> str | None:
    """path_problem without its fast path: each rule checked in turn, for
    the message."""
    if path == "":
        return "is empty"
    if "\0" in path:
        return "contains a NUL character"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return "contains a control character"
    if not path.startswith("/"):
        return "is relative (it must start with /)"
    if path == "/":
        return None
    if len(path.encode("utf-8", "surrogatepass")) > PATH_MAX:
        return f"is longer than {PATH_MAX} bytes"
    body = path[1:-1] if path.endswith("/") else path[1:]
    for name in body.split("/"):
        if name == "":
            return 'contains an empty component ("//")'
        if name == ".":
            return 'contains a "." component'
        if name == "..":
            return 'contains a ".." component'
        if name != name.rstrip():
            return f'has a component ending in white space ("{name}")'
        if len(name.encode("utf-8", "surrogatepass")) > NAME_MAX:
            return f"has a component longer than {NAME_MAX} bytes"
    return None


def split_path(path: str) -> tuple[str, ...]:
    """Components of a clean absolute path ("/" -> (), "/a/b/" -> ("a", "b"))."""
    body = path.strip("/")
    return tuple(body.split("/")) if body else ()


def parts_of(path: str) -> tuple[str, ...]:
    """Components of a path given to ``match``; ValueError unless it is clean.

    A path to match names one object, so it must be absolute, without "",
    "." or ".." components (a trailing slash is an empty component: "/etc/"
    would be ambiguous) and without NUL. Unlike a rule, it may hold any other
    character: files with odd names exist, and fall under their directory's
    rule. This runs on every lookup, so it only splits and scans.
    """
    if type(path) is not str:
        raise TypeError(f"path must be a str, not {type(path).__name__}")
    if path == "/":
        return ()
    parts = path[1:].split("/")
    if path[:1] != "/" or "" in parts or "." in parts or ".." in parts or "\0" in path:
        raise ValueError(f"path {path!r} {_why_unclean(path)}")
    return tuple(parts)


def _why_unclean(path: str) -> str:
    if path.endswith("/") and path_problem(path) is None:
        return "ends with / (name the object itself)"
    if "\0" in path:
        return "contains a NUL character"
    if not path.startswith("/"):
        return "is relative (it must start with /)" if path else "is empty"
    body = path[1:]
    for name in body.split("/"):
        if name == "":
            return 'contains an empty component ("//")'
        if name in (".", ".."):
            return f'contains a "{name}" component'
    return "ends with / (name the object itself)"  # pragma: no cover
