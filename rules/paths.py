"""Syntax of the paths a policy names (rules, mounts, programs).

A rule path must name exactly one place in the pod's tree, spelled one way:
absolute, no "." or ".." (the rule would silently apply somewhere else, or
never), no empty component ("//"), no NUL or control character (a C string
ends at NUL; a newline in a path hides in logs), no component ending in white
space (invisible in an editor: "/etc/shadow " is not "/etc/shadow"). PeaFS
compares components byte for byte, so a rule must be written the same way.
"""

from __future__ import annotations

NAME_MAX = 255    # bytes in one component (Linux NAME_MAX)
PATH_MAX = 4095   # bytes in a path, without the final NUL (Linux PATH_MAX - 1)


def path_problem(path: str) -> str | None:
    """Why *path* is not a clean absolute path, or None.

    A single trailing slash is allowed (the caller decides what it means);
    the path "/" is clean.
    """
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

    Unlike a rule key, a path to match names one object, so a trailing slash
    is refused too: "/etc/" would be ambiguous (the directory, or below it).
    """
    if type(path) is not str:
        raise TypeError(f"path must be a str, not {type(path).__name__}")
    if path == "/":
        return ()
    problem = path_problem(path)
    if problem is None and path.endswith("/"):
        problem = "ends with / (name the object itself)"
    if problem is not None:
        raise ValueError(f"path {path!r} {problem}")
    return tuple(path[1:].split("/"))
