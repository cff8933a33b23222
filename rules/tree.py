"""The rule tree: one hash table per directory, so a lookup costs O(depth).

A pea's file rules and exec transitions live in one tree that mirrors the
directory tree. A node is a small list (faster to index than attributes):

    [children, path_rule, dir_rule, exec_path, exec_dir]

* ``children``  dict: component name -> node
* ``path_rule`` Match of the path-specific rule on this node's path, or None
* ``dir_rule``  Match of the directory-default rule (applies BELOW this node)
* ``exec_path`` target pea of a path-specific transition; "" = "no transition"
                (only hard-link rules use ""); None = no rule here
* ``exec_dir``  target pea of a directory-default transition, or None

Matching walks the path's components once, remembering the last
directory-default rule seen above the current node (the four steps of DESIGN
section 4 read from the root down instead of from the path up: the closest
directory-default above the path is the last one met on the way down). Each
rule's Match is built once, when the rule is added, so a lookup without a
transition allocates nothing.
"""

from __future__ import annotations

from typing import NamedTuple

CHILDREN, PATH, DIR, XPATH, XDIR = range(5)


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


def new_node() -> list:
    return [{}, None, None, None, None]


def node_at(root: list, parts: tuple[str, ...]) -> list:
    """The node of *parts*, created (with its ancestors) if missing."""
    node = root
    for name in parts:
        children = node[CHILDREN]
        child = children.get(name)
        if child is None:
            child = children[name] = new_node()
        node = child
    return node


def find_node(root: list, parts: tuple[str, ...]) -> list | None:
    node = root
    for name in parts:
        node = node[CHILDREN].get(name)
        if node is None:
            return None
    return node


def prune(root: list, parts: tuple[str, ...]) -> None:
    """Remove the empty nodes at the end of *parts* (after a rule was dropped)."""
    trail = [root]
    for name in parts:
        child = trail[-1][CHILDREN].get(name)
        if child is None:
            return
        trail.append(child)
    for depth in range(len(parts), 0, -1):
        node = trail[depth]
        if node[CHILDREN] or any(node[i] is not None for i in (PATH, DIR, XPATH, XDIR)):
            return
        del trail[depth - 1][CHILDREN][parts[depth - 1]]


def lookup(root: list, parts) -> Match:
    """The deciding file rule and the exec transition for *parts*."""
    node = root
    best = node[DIR]          # "/" always has a directory-default
    xbest = node[XDIR]
    last = len(parts) - 1
    if last >= 0:
        children = node[CHILDREN]
        i = 0
        while True:
            node = children.get(parts[i])
            if node is None:
                break
            if i == last:
                # Step 1: a path-specific rule on the path itself decides.
                rule = node[PATH]
                if rule is not None:
                    best = rule
                rule = node[XPATH]
                if rule is not None:
                    xbest = rule
                break
            # Steps 3-4 from the top: a directory-default on an ancestor
            # covers the path unless a closer one (met later) overrides it.
            rule = node[DIR]
            if rule is not None:
                best = rule
            rule = node[XDIR]
            if rule is not None:
                xbest = rule
            children = node[CHILDREN]
            i += 1
    if not xbest:             # None (no rule) or "" (a link without transition)
        return best
    return Match(best[0], best[1], best[2], xbest)


def lookup_exec(root: list, parts) -> str | None:
    """Only the transition target (the exec table's four-step matching)."""
    node = root
    xbest = node[XDIR]
    last = len(parts) - 1
    if last >= 0:
        children = node[CHILDREN]
        i = 0
        while True:
            node = children.get(parts[i])
            if node is None:
                break
            if i == last:
                rule = node[XPATH]
                if rule is not None:
                    xbest = rule
                break
            rule = node[XDIR]
            if rule is not None:
                xbest = rule
            children = node[CHILDREN]
            i += 1
    return xbest or None
