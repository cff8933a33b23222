"""The objects a loaded policy is made of: Policy, Pea and their parts.

A Policy is immutable once loaded, with one exception: the rules that hard
links add (docs/FORMAT.md, section 9, "Hard links"). PeaFS calls ``add_link`` when a pod
process creates a link, so that the new name grants in every pea exactly what
the original name granted at that moment; otherwise a pea could reach a file
it may not write through a second name under a directory it may write.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Mapping, NamedTuple

from .paths import parts_of, split_path
from .tree import Match, add_rule, get_path_rule, lookup, lookup_exec, new_node, set_path_rule

PERM_ORDER = "rwx"


class IdRange(NamedTuple):
    """One line of a user namespace id map: ids inside..inside+count-1 in the
    pod are outside..outside+count-1 on the host."""

    inside: int
    outside: int
    count: int


class Mount(NamedTuple):
    """A host directory placed at ``path`` in the pod, read-only unless rw."""

    host: Path
    path: str
    rw: bool


class Net(NamedTuple):
    """The pod's veth: ``address`` as written ("10.88.0.2/24"), the pod's
    ``ip``, the host side's ``host_ip`` (first host address of the network)
    and the ``prefixlen``; ``host``: whether pod processes may reach the
    host's own addresses (the veth's host side among them)."""

    address: str
    ip: str
    host_ip: str
    prefixlen: int
    host: bool = False


# Ways in which the peas of one pod are NOT separated on the kernels Pea-Pod
# runs on (docs/SECURITY.md, "Known gaps"). A pod with more than one pea
# starts only if its policy accepts each of them by name ([pod] accept_gaps):
# an administrator who splits a service into peas must not believe in a
# separation that is not there.
KNOWN_GAPS = {
    "proc-read": "a process may read /proc/PID/mem, environ and fd/N of a process "
                 "of another pea that runs as the same uid",
    "ipc-after-transition": "a process that changed pea at exec keeps the SysV IPC "
                            "and POSIX queue namespace of the pea it started in",
}


class Service(NamedTuple):
    """One program the pod's daemon runs and watches ([[pod.service]]).

    ``user`` is a pod user name (looked up in the pod's /etc/passwd when the
    service starts) or a pod uid; ``restart`` is "no", "on-failure" or
    "always"."""

    name: str
    exec: tuple[str, ...]
    pea: str
    user: str | int = 0
    restart: str = "on-failure"


RESTART_POLICIES = ("no", "on-failure", "always")


# Gaps closed since: still accepted in accept_gaps (an older policy keeps
# loading), and meaning nothing.
RETIRED_GAPS = {
    "abstract-unix": "closed: an abstract Unix name is reachable only from the pea that "
                     "bound it (docs/SECURITY.md)",
}


class Limits(NamedTuple):
    """Resource limits of the whole pod (None = no limit)."""

    memory: int | None = None
    pids: int | None = None


def file_match(key: str, perm: str) -> Match:
    """The Match a file rule written as ``key = perm`` produces."""
    if key.endswith("/"):
        return Match(perm, key, "directory", None)
    return Match(perm, key, "path", None)


DENY_ALL = Match("", "/", "default", None)


class Pea:
    """A least-privilege domain: its file rules, transitions and network rights.

    ``files`` and ``exec`` are the pea's rules as written in the policy
    (permissions normalised to "rwx" order), in file order; ``files`` holds
    those of the rule sets it uses too (``use``). ``origins`` maps each key
    that came from a set to the set's name (the pea's own keys are not in
    it); ``conflicts`` lists (key, perm, origin, replaced perm, replaced
    origin) for each rule that replaced another with different letters
    (origin None: the pea's own rule).
    """

    __slots__ = ("name", "complain", "connect", "bind", "files", "exec", "origins",
                 "conflicts", "_root", "_shadow")

    def __init__(self, name: str, *, files: Mapping[str, str] | None = None,
                 exec: Mapping[str, str] | None = None, complain: bool = False,
                 connect: bool = False, bind=(), origins: Mapping[str, str] | None = None,
                 conflicts=()):
        self.name = name
        self.complain = bool(complain)
        self.connect = bool(connect)
        self.bind = frozenset(bind)
        self.files = types.MappingProxyType(dict(files or {}))
        self.origins = types.MappingProxyType(dict(origins or {}))
        self.conflicts = tuple(conflicts)
        self.exec = types.MappingProxyType(dict(exec or {}))
        root = new_node()
        root.dir = DENY_ALL
        for key, perm in self.files.items():
            add_rule(root, split_path(key), key.endswith("/"), file_match(key, perm), None)
        for key, target in self.exec.items():
            add_rule(root, split_path(key), key.endswith("/"), None, target)
        self._root = root
        # parts -> (path_rule, exec_path) the policy had before a link rule
        # replaced them, so drop_link can put them back.
        self._shadow: dict[tuple[str, ...], tuple] = {}

    def __repr__(self) -> str:
        return f"<Pea {self.name} files={len(self.files)} exec={len(self.exec)}>"

    def match(self, path: str) -> Match:
        """The rule that decides for absolute *path* (ValueError if unclean)."""
        return lookup(self._root, parts_of(path))

    def match_parts(self, parts: tuple[str, ...]) -> Match:
        """``match`` for a path given as components; they are trusted to be
        real names (no "", ".", ".." or "/"), as PeaFS's lookups are."""
        return lookup(self._root, parts)

    def transition(self, path: str) -> str | None:
        """The pea a process of this pea moves to when it executes *path*."""
        return lookup_exec(self._root, parts_of(path))

    def transition_parts(self, parts: tuple[str, ...]) -> str | None:
        return lookup_exec(self._root, parts)

    # -- hard-link rules (called through Policy) --------------------------

    def _set_link(self, parts: tuple[str, ...], path: str, perm: str, exec_to: str | None) -> None:
        if parts not in self._shadow:
            self._shadow[parts] = get_path_rule(self._root, parts)
        set_path_rule(self._root, parts, Match(perm, path, "path", None), exec_to or "")

    def _drop_link(self, parts: tuple[str, ...]) -> None:
        saved = self._shadow.pop(parts, None)
        if saved is not None:
            set_path_rule(self._root, parts, *saved)


class Policy:
    """A loaded, valid policy: one pod and its peas (see docs/FORMAT.md)."""

    __slots__ = ("file", "name", "hostname", "root", "uid_map", "gid_map", "default_pea",
                 "init", "services", "mounts", "net", "limits", "accept_gaps", "peas",
                 "_links", "_frozen")

    def __init__(self, *, file: Path | None, name: str, hostname: str, root: Path,
                 uid_map: tuple[IdRange, ...], gid_map: tuple[IdRange, ...],
                 default_pea: str, init: tuple[str, ...] | None, mounts: tuple[Mount, ...],
                 net: Net | None, limits: Limits, peas: dict[str, Pea],
                 accept_gaps: frozenset[str] = frozenset(),
                 services: tuple[Service, ...] | None = None):
        self.file = file
        self.name = name
        self.hostname = hostname
        self.root = root
        self.uid_map = tuple(uid_map)
        self.gid_map = tuple(gid_map)
        self.default_pea = default_pea
        self.init = init
        # `init` is the one-service shorthand: a service "init", never restarted.
        if services is None:
            services = (Service("init", tuple(init), default_pea, 0, "no"),) if init else ()
        self.services = tuple(services)
        self.mounts = tuple(mounts)
        self.net = net
        self.limits = limits
        self.accept_gaps = frozenset(accept_gaps)
        self.peas = types.MappingProxyType(dict(peas))
        # new_path -> {pea name -> (perm, exec_to)}
        self._links: dict[str, dict[str, tuple[str, str | None]]] = {}
        self._frozen = True

    def __setattr__(self, attr, value):
        if getattr(self, "_frozen", False):
            raise AttributeError(f"Policy is immutable (cannot set {attr})")
        object.__setattr__(self, attr, value)

    def __repr__(self) -> str:
        return f"<Policy {self.name} peas={list(self.peas)}>"

    def unaccepted_gaps(self) -> list[str]:
        """The known gaps between peas (KNOWN_GAPS) this policy relies on
        without accepting them: all that ``accept_gaps`` lacks when there
        are several peas, none for a single pea."""
        if len(self.peas) < 2:
            return []
        return [g for g in KNOWN_GAPS if g not in self.accept_gaps]

    def pea(self, name: str) -> Pea:
        """The pea called *name*; KeyError if the policy has none."""
        try:
            return self.peas[name]
        except KeyError:
            raise KeyError(f"policy {self.name!r} has no pea {name!r}") from None

    # -- hard links ------------------------------------------------------

    def add_link(self, new_path: str, existing_path: str) -> None:
        """Give *new_path*, in every pea, a path-specific rule equal to what
        *existing_path* matches now (perm and exec transition).

        A link rule takes precedence over a policy rule on the same path
        (the policy's rule comes back on ``drop_link``): the object behind
        the new name is the original's, so it must be guarded like it.
        """
        new_parts = parts_of(new_path)
        old_parts = parts_of(existing_path)
        if not new_parts:
            raise ValueError("cannot link onto /")
        # Read every pea's answer before changing any rule.
        entry = {}
        for name, pea in self.peas.items():
            m = lookup(pea._root, old_parts)
            entry[name] = (m.perm, m.exec_to)
        self._put_link(new_path, new_parts, entry)

    def _put_link(self, path: str, parts: tuple[str, ...], entry) -> None:
        for name, pea in self.peas.items():
            perm, exec_to = entry.get(name, ("", None))
            pea._set_link(parts, path, perm, exec_to)
        self._links[path] = dict(entry)

    def drop_link(self, path: str) -> None:
        """Remove the rules ``add_link`` put on *path* (never the policy's own)."""
        parts = parts_of(path)
        if self._links.pop(path, None) is None:
            return
        for pea in self.peas.values():
            pea._drop_link(parts)

    def links(self) -> dict:
        """The link rules, JSON-serialisable:
        {path: {pea: {"perm": "r", "exec_to": None}}}."""
        return {path: {pea: {"perm": perm, "exec_to": exec_to}
                       for pea, (perm, exec_to) in entry.items()}
                for path, entry in self._links.items()}

    def restore_links(self, data: dict) -> None:
        """Replace the link rules by *data* (as returned by ``links``).

        Raises ValueError, changing nothing, if *data* names an unknown pea,
        an unclean path or a malformed permission: the file PeaFS keeps them
        in lives on disk, so it is input like any other.
        """
        if not isinstance(data, dict):
            raise ValueError("link rules must be a JSON object")
        checked = []
        for path, entry in data.items():
            if not isinstance(path, str):
                raise ValueError(f"link path {path!r} is not a string")
            parts = parts_of(path)
            if not parts:
                raise ValueError("cannot link onto /")
            if not isinstance(entry, dict):
                raise ValueError(f"link rule for {path!r} must be an object")
            rules = {}
            for pea, rule in entry.items():
                if pea not in self.peas:
                    raise ValueError(f"link rule for {path!r} names unknown pea {pea!r}")
                if not isinstance(rule, dict) or set(rule) != {"perm", "exec_to"}:
                    raise ValueError(f"link rule for {path!r} in pea {pea!r} must be "
                                     '{"perm": ..., "exec_to": ...}')
                perm, exec_to = rule["perm"], rule["exec_to"]
                if not isinstance(perm, str) or normal_perm(perm) != perm:
                    raise ValueError(f"link rule for {path!r} has bad permission {perm!r}")
                if exec_to is not None and exec_to not in self.peas:
                    raise ValueError(f"link rule for {path!r} moves to unknown pea {exec_to!r}")
                rules[pea] = (perm, exec_to)
            checked.append((path, parts, rules))
        for path in list(self._links):
            self.drop_link(path)
        for path, parts, rules in checked:
            self._put_link(path, parts, rules)


def normal_perm(perm: str) -> str | None:
    """*perm* in "rwx" order, or None if it has other letters or repeats."""
    if len(set(perm)) != len(perm) or not set(perm) <= set(PERM_ORDER):
        return None
    return "".join(c for c in PERM_ORDER if c in perm)
