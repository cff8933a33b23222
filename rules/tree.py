"""The rule tree: one hash table per directory, so a lookup costs O(depth).

A pea's file rules and exec transitions live in one tree of ``Node`` objects
that mirrors the directory tree. Each node is a directory and holds:

* ``children``  dict: name -> Node of each subdirectory that has rules below
* ``files``     dict: name -> Match of the path-specific rule on the entry
                ``name`` of this directory (a file, or a directory itself)
* ``dir``       Match of this directory's directory-default rule (it applies
                BELOW the directory), or None
* ``xfiles``    dict: name -> target pea of a path-specific transition; ""
                means "no transition" (a hard link's rule, hiding a
                directory transition)
* ``xdir``      target pea of this directory's directory-default transition

Matching walks the directories of the path once, from the root down,
remembering the last directory-default seen: the closest directory-default
above the path is the last one met on the way down (the four steps of DESIGN
section 4, read top-down). Then the path's own name is looked up in the files
table of its directory (step 1). Each rule's Match is built when the rule is
added, so a lookup without a transition allocates nothing.

Why the path-specific rules sit in their directory's ``files`` table rather
than in a node of their own: the last component of a path is where a tree of
many rules is widest and coldest in the CPU caches; one table access there,
instead of a node and its fields, is measurably faster on large policies
(bench/rules.py). Nodes use __slots__ for the same reason (one object per
directory, fields inline).
"""

from __future__ import annotations

from typing import NamedTuple

# Shared by every node without rules of a kind; never mutated: a node gets
# its own dict before its first rule of that kind (see _own).
EMPTY: dict = {}


class Match(NamedTuple):
    """The rule that decides for one path in one pea.

    perm:    granted letters in "rwx" order, "" for none
    rule:    the deciding rule as written: "/etc/smtpd/" (directory-default),
             "/usr/sbin/smtpd" (path-specific), "/" (the root default)
    kind:    "path" | "directory" | "default" ("default" = the implicit
             deny-all rule on "/" of a pea that does not set "/")
    exec_to: the pea a process moves to when it executes this path, or None
    """

    perm: str
    rule: str
    kind: str
    exec_to: str | None


class Node:
    """One directory of the rule tree (see the module docstring)."""

    __slots__ = ("children", "files", "dir", "xfiles", "xdir")

    def __init__(self):
        self.children = EMPTY
        self.files = EMPTY
        self.dir = None
        self.xfiles = EMPTY
        self.xdir = None

    def empty(self) -> bool:
        return not (self.children or self.files or self.xfiles
                    or self.dir is not None or self.xdir is not None)


def new_node() -> Node:
    return Node()


def _own(node: Node, field: str) -> dict:
    """node.<field> as a dict of the node's own, for writing."""
    table = getattr(node, field)
    if table is EMPTY:
        table = {}
        setattr(node, field, table)
    return table


def dir_node(root: Node, parts, create: bool = True) -> Node | None:
    """The node of directory *parts*; created with its ancestors if *create*,
    else None when missing."""
    node = root
    for name in parts:
        child = node.children.get(name)
        if child is None:
            if not create:
                return None
            child = _own(node, "children")[name] = new_node()
        node = child
    return node


def add_rule(root: Node, parts: tuple[str, ...], directory: bool, match: Match | None,
             target: str | None) -> None:
    """Put a file rule (*match*) and/or a transition (*target*) on *parts*:
    a directory-default if *directory*, else a path-specific rule."""
    if directory:
        node = dir_node(root, parts)
        if match is not None:
            node.dir = match
        if target is not None:
            node.xdir = target
    else:
        node = dir_node(root, parts[:-1])
        if match is not None:
            _own(node, "files")[parts[-1]] = match
        if target is not None:
            _own(node, "xfiles")[parts[-1]] = target


def get_path_rule(root: Node, parts: tuple[str, ...]) -> tuple[Match | None, str | None]:
    """The path-specific (Match, transition) on *parts*, each None if absent."""
    node = dir_node(root, parts[:-1], create=False)
    if node is None:
        return None, None
    return node.files.get(parts[-1]), node.xfiles.get(parts[-1])


def set_path_rule(root: Node, parts: tuple[str, ...], match: Match | None,
                  target: str | None) -> None:
    """Set (or, with None, remove) the path-specific rule and transition on
    *parts*; prune the directories left without rules."""
    name = parts[-1]
    node = dir_node(root, parts[:-1], create=match is not None or target is not None)
    if node is None:
        return
    if match is None:
        _discard(node.files, name)
    else:
        _own(node, "files")[name] = match
    if target is None:
        _discard(node.xfiles, name)
    else:
        _own(node, "xfiles")[name] = target
    if match is None and target is None:
        prune(root, parts[:-1])


def _discard(table: dict, name: str) -> None:
    if table:                 # never EMPTY: a non-empty table is the node's own
        table.pop(name, None)


def prune(root: Node, parts: tuple[str, ...]) -> None:
    """Remove the directories at the end of *parts* left without any rule."""
    trail = [root]
    for name in parts:
        child = trail[-1].children.get(name)
        if child is None:
            return
        trail.append(child)
    for depth in range(len(parts), 0, -1):
        if not trail[depth].empty():
            return
        del trail[depth - 1].children[parts[depth - 1]]


def lookup(root: Node, parts) -> Match:
    """The deciding file rule and the exec transition for *parts*."""
    node = root
    best = node.dir           # "/" always has a directory-default
    xbest = node.xdir
    last = len(parts) - 1
    if last >= 0:
        i = 0
        while i < last:
            # Steps 3-4 from the top: a directory-default on an ancestor
            # covers the path unless a closer one (met later) overrides it.
            node = node.children.get(parts[i])
            if node is None:
                break
            rule = node.dir
            if rule is not None:
                best = rule
            rule = node.xdir
            if rule is not None:
                xbest = rule
            i += 1
        else:
            # Step 1: a path-specific rule on the path itself decides.
            name = parts[last]
            rule = node.files.get(name)
            if rule is not None:
                best = rule
            xfiles = node.xfiles
            if xfiles:
                rule = xfiles.get(name)
                if rule is not None:
                    xbest = rule
    if not xbest:             # None (no rule) or "" (a link without transition)
        return best
    return Match(best[0], best[1], best[2], xbest)


def lookup_exec(root: Node, parts) -> str | None:
    """Only the transition target (the exec table's four-step matching)."""
    node = root
    xbest = node.xdir
    last = len(parts) - 1
    if last >= 0:
        i = 0
        while i < last:
            node = node.children.get(parts[i])
            if node is None:
                break
            rule = node.xdir
            if rule is not None:
                xbest = rule
            i += 1
        else:
            rule = node.xfiles.get(parts[last])
            if rule is not None:
                xbest = rule
    return xbest or None
