"""From the dict tomllib returns to a Policy, or to every problem at once.

The checker walks the document once and notes each problem with the key path
it is about (("pod", "uid_map"), ("pea", "smtpd", "files", "/etc/")); line
numbers are looked up only if there are problems (see lines.py), so a large
valid policy costs one tomllib pass and one pass here.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
from pathlib import Path

from kernel.names import NAME_RE

from .paths import path_problem
from .policy import (KNOWN_GAPS, RESTART_POLICIES, RETIRED_GAPS, IdRange, Limits, Mount, Net,
                     Pea, Policy, Service, normal_perm)

NAME_RULE = 'use a lower-case letter, then up to 30 lower-case letters, digits or "-"'
# A host name is what sethostname accepts and resolvers expect: RFC 1123
# labels, 64 bytes at most (the kernel's limit for a UTS name).
HOSTNAME_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\Z")

ID_LIMIT = 2**32 - 1        # (uid_t)-1 is "no id" to the kernel
MAP_ENTRIES_MAX = 340       # lines a user namespace id map may have (Linux >= 4.15)
DEFAULT_ID_MAP = (IdRange(0, 100000, 65536),)
SIZE_RE = re.compile(r"([0-9]+)\s*(?:([KMG])(?:i?B)?|B)?\Z", re.IGNORECASE)
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

TOP_KEYS = ("pod", "pea")
POD_KEYS = ("name", "hostname", "root", "uid_map", "gid_map", "default_pea", "init",
            "service", "mount", "net", "limits", "accept_gaps")
SERVICE_KEYS = ("name", "exec", "pea", "user", "restart")
# A user name as the shadow suite accepts it (useradd's default NAME_REGEX,
# plus the trailing "$" of machine accounts): looked up in the pod's
# /etc/passwd when the service starts.
USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?\Z")
MOUNT_KEYS = ("host", "path", "rw")
POD_NET_KEYS = ("address", "host")
LIMIT_KEYS = ("memory", "pids")
PEA_KEYS = ("complain", "files", "exec", "net", "use")
PEA_NET_KEYS = ("connect", "bind")


def type_name(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.datetime):
        return "a date-time"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, datetime.time):
        return "a time"
    return type(value).__name__  # pragma: no cover - tomllib returns nothing else


def quote(text: str) -> str:
    """*text* in double quotes, escaped like a TOML basic string."""
    return json.dumps(text, ensure_ascii=False)


def dotted(path: tuple) -> str:
    """A key path as TOML would write it: pea.smtpd.files."/etc/"."""
    out = []
    for part in path:
        if isinstance(part, int):
            out[-1] += f"[{part + 1}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            out.append(part)
        else:
            out.append(quote(part))
    return ".".join(out)


class Checker:
    """Collects (key path, message) problems while building a Policy."""

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self.problems: list[tuple[tuple, str]] = []
        self.pea_names: list[str] = []   # every well-formed pea name, valid pea or not
        self.sets: dict = {}             # rule set name -> rules or SetError (read once)

    def bad(self, path: tuple, message: str) -> None:
        self.problems.append((path, message))

    # -- generic checks ----------------------------------------------------

    def table(self, value, path: tuple, known: tuple[str, ...], where: str) -> dict | None:
        """*value* as a table whose keys are all in *known*, or None."""
        if not isinstance(value, dict):
            self.bad(path, f"{dotted(path)} must be a table, not {type_name(value)}")
            return None
        for key in value:
            if key not in known:
                self.bad(path + (key,), f"unknown key {quote(key)} in {where} "
                                        f"(expected {', '.join(known)})")
        return value

    def typed(self, table: dict, path: tuple, key: str, kind: type, what: str):
        """table[key] if it is of *kind* (None if absent or wrong)."""
        if key not in table:
            return None
        value = table[key]
        ok = type(value) is kind  # bool is not an int here
        if not ok:
            self.bad(path + (key,), f"{dotted(path + (key,))} must be {what}, "
                                    f"not {type_name(value)}")
            return None
        return value

    def subtable(self, table: dict, path: tuple, key: str) -> dict | None:
        """table[key] if it is a table ({} if absent, None if not a table)."""
        value = table.get(key, {})
        if isinstance(value, dict):
            return value
        self.bad(path + (key,), f"{dotted(path + (key,))} must be a table, not {type_name(value)}")
        return None

    def name(self, value: str, path: tuple, what: str) -> bool:
        if NAME_RE.match(value):
            return True
        self.bad(path, f"{what} {quote(value)} is not valid: {NAME_RULE}")
        return False

    def clean_path(self, value: str, path: tuple, what: str) -> bool:
        problem = path_problem(value)
        if problem is None:
            return True
        self.bad(path, f"{what} {quote(value)} {problem}")
        return False

    # -- the document ------------------------------------------------------

    def document(self, data: dict, file: Path | None) -> Policy | None:
        for key in data:
            if key not in TOP_KEYS:
                self.bad((key,), f"unknown key {quote(key)} at the top level "
                                 "(expected [pod] and [pea.NAME] tables)")
        pod = data.get("pod")
        if pod is None:
            self.bad(("pod",), "missing [pod] table (name and root of the pod)")
        else:
            pod = self.table(pod, ("pod",), POD_KEYS, "[pod]")
        peas = self.peas(data.get("pea"))
        if pod is None:  # already reported; its keys would only repeat it
            return None
        fields = self.pod(pod, peas)
        if self.problems:
            return None
        return Policy(file=file, peas=peas, **fields)

    def pod(self, pod: dict, peas: dict[str, Pea]) -> dict:
        at = ("pod",)
        name = self.typed(pod, at, "name", str, "a string")
        if "name" not in pod:
            self.bad(at, '[pod] has no "name"')
        elif name is not None:
            self.name(name, at + ("name",), "pod name")
        hostname = self.typed(pod, at, "hostname", str, "a string")
        if hostname is not None and not (HOSTNAME_RE.match(hostname) and len(hostname) <= 64):
            self.bad(at + ("hostname",), f"hostname {quote(hostname)} is not valid: use letters, "
                     'digits and "-" in dot-separated labels, 64 characters at most')
        root = self.root(pod)
        uid_map = self.id_map(pod, "uid_map", None)
        gid_map = self.id_map(pod, "gid_map", uid_map)
        default_pea = self.default_pea(pod, peas)
        init = self.init(pod)
        services = self.services(pod, peas, default_pea, init, uid_map or DEFAULT_ID_MAP)
        mounts = self.mounts(pod.get("mount"))
        net = self.net(pod.get("net"))
        limits = self.limits(pod.get("limits"))
        accept_gaps = self.accept_gaps(pod)
        return dict(name=name or "", hostname=hostname or name or "", root=root,
                    uid_map=uid_map or DEFAULT_ID_MAP, gid_map=gid_map or DEFAULT_ID_MAP,
                    default_pea=default_pea or "", init=init, mounts=mounts, net=net,
                    limits=limits, accept_gaps=accept_gaps, services=services)

    def accept_gaps(self, pod: dict) -> frozenset[str]:
        at = ("pod", "accept_gaps")
        value = pod.get("accept_gaps")
        if value is None:
            return frozenset()
        known = ", ".join(KNOWN_GAPS)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.bad(at, f"accept_gaps must be an array of strings (of {known})")
            return frozenset()
        for v in value:
            if v not in KNOWN_GAPS and v not in RETIRED_GAPS:
                self.bad(at, f"accept_gaps names an unknown gap {quote(v)} (known: {known})")
        return frozenset(v for v in value if v in KNOWN_GAPS)

    def root(self, pod: dict) -> Path:
        at = ("pod", "root")
        value = self.typed(pod, ("pod",), "root", str, "a string")
        if "root" not in pod:
            self.bad(("pod",), '[pod] has no "root" (the staging directory of the pod)')
            return Path("/")
        if value is None:
            return Path("/")
        if value.startswith("/"):
            if self.clean_path(value, at, "root") and value.rstrip("/") == "":
                self.bad(at, 'root "/" would make the whole host the pod\'s tree')
            return Path(value)
        # Relative to the policy file's directory: the same syntax as an
        # absolute path once a "/" is put in front.
        problem = path_problem("/" + value) if value else "is empty"
        if problem is not None:
            self.bad(at, f"root {quote(value)} {problem}")
        return self.base_dir / value

    def id_map(self, pod: dict, key: str, default) -> tuple[IdRange, ...] | None:
        at = ("pod", key)
        if key not in pod:
            return default
        value = pod[key]
        shape = f"{key} must be an array of [inside, outside, count] entries"
        if not isinstance(value, list):
            self.bad(at, f"{shape}, not {type_name(value)}")
            return None
        if not value:
            self.bad(at, f"{key} is empty: it needs at least the pod's root, like [[0, 100000, 65536]]")
            return None
        if all(type(v) is int for v in value):
            # [0, 100000, 65536]: one entry without the outer brackets.
            self.bad(at, f"{key} must be an array of [inside, outside, count] entries, "
                         "like [[0, 100000, 65536]]")
            return None
        if len(value) > MAP_ENTRIES_MAX:
            self.bad(at, f"{key} has {len(value)} entries; the kernel takes at most {MAP_ENTRIES_MAX}")
            return None
        ranges = []
        for n, entry in enumerate(value, 1):
            if not (isinstance(entry, list) and len(entry) == 3
                    and all(type(v) is int for v in entry)):
                self.bad(at, f"{key} entry {n} must be [inside, outside, count] "
                             f"(three integers), not {_show(entry)}")
                continue
            inside, outside, count = entry
            if inside < 0 or outside < 0:
                self.bad(at, f"{key} entry {n} has a negative id")
            elif count < 1:
                self.bad(at, f"{key} entry {n} has count {count}; it must be at least 1")
            elif inside + count > ID_LIMIT or outside + count > ID_LIMIT:
                self.bad(at, f"{key} entry {n} goes beyond the largest id, {ID_LIMIT - 1}")
            elif outside == 0:
                # Host id 0 is the host's root: a pod process must never
                # be it, whatever ids the pod uses.
                self.bad(at, f"{key} entry {n} maps host id 0 (the host's root) into the pod")
            else:
                ranges.append((n, IdRange(inside, outside, count)))
        ok = len(ranges) == len(value)
        for i, (n1, a) in enumerate(ranges):
            for n2, b in ranges[i + 1:]:
                if a.inside < b.inside + b.count and b.inside < a.inside + a.count:
                    self.bad(at, f"{key} entries {n1} and {n2} overlap inside the pod")
                    ok = False
                if a.outside < b.outside + b.count and b.outside < a.outside + a.count:
                    self.bad(at, f"{key} entries {n1} and {n2} overlap on the host")
                    ok = False
        if ok and not any(r.inside == 0 for _, r in ranges):
            self.bad(at, f"{key} does not map pod id 0 (the pod's root)")
            ok = False
        return tuple(r for _, r in ranges) if ok else None

    def default_pea(self, pod: dict, peas: dict[str, Pea]) -> str | None:
        peas = self.pea_names
        value = self.typed(pod, ("pod",), "default_pea", str, "a string")
        if "default_pea" not in pod:
            if len(peas) == 1:
                return next(iter(peas))
            if len(peas) > 1:
                self.bad(("pod",), '[pod] has no "default_pea" and there are several peas '
                                   f"({', '.join(peas)})")
            return None
        if value is not None and peas and value not in peas:
            self.bad(("pod", "default_pea"), f"default_pea {quote(value)} names no pea "
                                             f"(peas: {', '.join(peas)})")
        return value

    def init(self, pod: dict) -> tuple[str, ...] | None:
        if "init" not in pod:
            return None
        return self.program(pod["init"], ("pod", "init"), "init")

    def program(self, value, at: tuple, what: str) -> tuple[str, ...] | None:
        """A program and its arguments (``init``, a service's ``exec``)."""
        if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            self.bad(at, f"{what} must be a non-empty array of strings (program, then arguments)")
            return None
        ok = self.clean_path(value[0], at, f"{what} program")
        if ok and value[0].endswith("/"):
            self.bad(at, f"{what} program {quote(value[0])} ends with / (name the program)")
            ok = False
        for arg in value[1:]:
            if "\0" in arg:
                self.bad(at, f"{what} argument contains a NUL character")
                ok = False
        return tuple(value) if ok else None

    def services(self, pod: dict, peas: dict[str, Pea], default_pea: str | None,
                 init: tuple[str, ...] | None, uid_map) -> tuple[Service, ...] | None:
        """[[pod.service]] tables; None when there are none (``init``, if
        given, is then the one service)."""
        at = ("pod", "service")
        value = pod.get("service")
        if value is None:
            return None
        if "init" in pod:
            self.bad(at, "[pod] has both init and [[pod.service]]: init is the shorthand for "
                         "one service, use one or the other")
            return None
        if not isinstance(value, list):
            self.bad(at, f"pod.service must be an array of tables ([[pod.service]]), "
                         f"not {type_name(value)}")
            return None
        out = []
        seen: dict[str, int] = {}
        for i, entry in enumerate(value):
            where = f"[[pod.service]] #{i + 1}"
            entry = self.table(entry, at + (i,), SERVICE_KEYS, where)
            if entry is None:
                continue
            ok = True
            name = self.typed(entry, at + (i,), "name", str, "a string")
            if "name" not in entry:
                self.bad(at + (i,), f'{where} has no "name"')
                ok = False
            elif name is None or not self.name(name, at + (i, "name"), "service name"):
                ok = False
            elif name in seen:
                self.bad(at + (i, "name"), f"service name {quote(name)} is already used by "
                                           f"[[pod.service]] #{seen[name]}")
                ok = False
            else:
                seen[name] = i + 1
            argv = None
            if "exec" not in entry:
                self.bad(at + (i,), f'{where} has no "exec" (program, then arguments)')
            else:
                argv = self.program(entry["exec"], at + (i, "exec"), "exec")
            ok = ok and argv is not None
            pea = default_pea
            if "pea" in entry:
                pea = self.typed(entry, at + (i,), "pea", str, "a string")
                if pea is not None and peas and pea not in peas:
                    self.bad(at + (i, "pea"), f"pea {quote(pea)} names no pea "
                                              f"(peas: {', '.join(peas)})")
                    pea = None
                ok = ok and pea is not None
            user: str | int = 0
            if "user" in entry:
                raw = entry["user"]
                if type(raw) is int:
                    if not any(r.inside <= raw < r.inside + r.count for r in uid_map):
                        self.bad(at + (i, "user"), f"user {raw} is not mapped by uid_map")
                        ok = False
                    user = raw
                elif isinstance(raw, str) and USER_RE.match(raw):
                    user = raw
                else:
                    self.bad(at + (i, "user"), f"user {_show(raw)} is neither a pod uid nor a "
                             "user name (letters, digits, \"_\", \".\", \"-\")")
                    ok = False
            restart = "on-failure"
            if "restart" in entry:
                restart = self.typed(entry, at + (i,), "restart", str, "a string")
                if restart is not None and restart not in RESTART_POLICIES:
                    self.bad(at + (i, "restart"), f"restart {quote(restart)} is not one of "
                             + ", ".join(quote(r) for r in RESTART_POLICIES))
                    restart = None
                ok = ok and restart is not None
            if ok:
                out.append(Service(name, argv, pea or "", user, restart))
        return tuple(out)

    def mounts(self, value) -> tuple[Mount, ...]:
        at = ("pod", "mount")
        if value is None:
            return ()
        if not isinstance(value, list):
            self.bad(at, f"pod.mount must be an array of tables ([[pod.mount]]), not {type_name(value)}")
            return ()
        mounts = []
        seen: dict[str, int] = {}
        for i, entry in enumerate(value):
            where = f"[[pod.mount]] #{i + 1}"
            entry = self.table(entry, at + (i,), MOUNT_KEYS, where)
            if entry is None:
                continue
            ok = True
            paths = {}
            for key, what in (("host", "host directory"), ("path", "directory in the pod")):
                if key not in entry:
                    self.bad(at + (i,), f'{where} has no "{key}" ({what})')
                    ok = False
                    continue
                v = self.typed(entry, at + (i,), key, str, "a string")
                if v is None or not self.clean_path(v, at + (i, key), f"mount {key}"):
                    ok = False
                    continue
                paths[key] = v.rstrip("/") or "/"
            rw = self.typed(entry, at + (i,), "rw", bool, "a boolean")
            if "rw" in entry and rw is None:
                ok = False
            if paths.get("host") == "/":
                self.bad(at + (i, "host"), 'mount host "/" would show the whole host in the pod')
                ok = False
            if paths.get("path") == "/":
                self.bad(at + (i, "path"), 'mount path "/" would hide the pod\'s own root')
                ok = False
            if "path" in paths:
                if paths["path"] in seen:
                    self.bad(at + (i, "path"), f"mount path {quote(paths['path'])} is already "
                             f"used by [[pod.mount]] #{seen[paths['path']]}")
                    ok = False
                else:
                    seen[paths["path"]] = i + 1
            if ok:
                mounts.append(Mount(Path(paths["host"]), paths["path"], bool(rw)))
        return tuple(mounts)

    def net(self, value) -> Net | None:
        at = ("pod", "net")
        if value is None:
            return None
        table = self.table(value, at, POD_NET_KEYS, "[pod.net]")
        if table is None:
            return None
        if "address" not in table:
            self.bad(at, '[pod.net] has no "address" (like "10.88.0.2/24")')
            return None
        host = self.typed(table, at, "host", bool, "a boolean")
        address = self.typed(table, at, "address", str, "a string")
        if address is None:
            return None
        at = at + ("address",)
        if "/" not in address:
            self.bad(at, f"address {quote(address)} has no prefix length (like \"10.88.0.2/24\")")
            return None
        try:
            iface = ipaddress.ip_interface(address)
        except ValueError:
            self.bad(at, f"address {quote(address)} is not an IP address with a prefix length "
                         '(like "10.88.0.2/24")')
            return None
        network = iface.network
        hosts = network.num_addresses - (2 if network.version == 4 else 1)
        if hosts < 2:
            self.bad(at, f"network {network} of address {quote(address)} has no room for "
                         "the host side and the pod")
            return None
        host_ip = network.network_address + 1
        if iface.ip == host_ip:
            self.bad(at, f"address {quote(address)} is the host side's address "
                         f"(the first address of {network})")
            return None
        if iface.ip == network.network_address or (
                network.version == 4 and iface.ip == network.broadcast_address):
            self.bad(at, f"address {quote(address)} is not a host address of {network}")
            return None
        return Net(address, str(iface.ip), str(host_ip), network.prefixlen, bool(host))

    def limits(self, value) -> Limits:
        at = ("pod", "limits")
        if value is None:
            return Limits()
        table = self.table(value, at, LIMIT_KEYS, "[pod.limits]")
        if table is None:
            return Limits()
        memory = None
        if "memory" in table:
            raw = table["memory"]
            if type(raw) is int:
                memory = raw
            elif isinstance(raw, str) and SIZE_RE.match(raw.strip()):
                m = SIZE_RE.match(raw.strip())
                memory = int(m.group(1)) * SIZE_UNITS[(m.group(2) or "").upper()]
            else:
                self.bad(at + ("memory",), f"memory {_show(raw)} is not a size (bytes, or a "
                         'number followed by K, M or G, like "256M")')
            if memory is not None and memory < 1 << 20:
                self.bad(at + ("memory",), f"memory {_show(raw)} is below 1M, too little "
                                           "to run anything")
                memory = None
        pids = self.typed(table, at, "pids", int, "an integer")
        if pids is not None and pids < 1:
            self.bad(at + ("pids",), f"pids {pids} must be at least 1")
            pids = None
        return Limits(memory, pids)

    # -- peas --------------------------------------------------------------

    def peas(self, value) -> dict[str, Pea]:
        at = ("pea",)
        if value is None:
            self.bad(at, "no peas: add at least one [pea.NAME] table")
            return {}
        if not isinstance(value, dict):
            self.bad(at, f"pea must be a table of peas ([pea.NAME]), not {type_name(value)}")
            return {}
        if not value:
            self.bad(at, "no peas: add at least one [pea.NAME] table")
            return {}
        names = [n for n in value if NAME_RE.match(n)]
        self.pea_names = names
        tables = {}
        for name, table in value.items():
            if not self.name(name, at + (name,), "pea name"):
                continue
            table = self.table(table, at + (name,), PEA_KEYS, f"[pea.{name}]")
            if table is not None:
                tables[name] = table
        peas = {}
        for name, table in tables.items():
            pea = self.pea(name, table, names)
            if pea is not None:
                peas[name] = pea
        return peas

    def pea(self, name: str, table: dict, names: list[str]) -> Pea | None:
        at = ("pea", name)
        ok = True
        complain = self.typed(table, at, "complain", bool, "a boolean")
        if "complain" in table and complain is None:
            ok = False
        files = {}
        raw = self.subtable(table, at, "files")
        if raw is None:
            ok = False
            raw = {}
        for key, perm in raw.items():
            kp = at + ("files", key)
            if not self.clean_path(key, kp, "file rule"):
                ok = False
                continue
            if not isinstance(perm, str):
                self.bad(kp, f"permission of {quote(key)} must be a string of letters "
                             f"from \"rwx\", not {type_name(perm)}")
                ok = False
                continue
            normal = normal_perm(perm)
            if normal is None:
                bad = sorted(set(perm) - set("rwx"))
                if bad:
                    self.bad(kp, f"permission {quote(perm)} of {quote(key)} has "
                                 f"{'letters' if len(bad) > 1 else 'a letter'} other than "
                                 f"r, w, x: {quote(''.join(bad))}")
                else:
                    twice = sorted({c for c in perm if perm.count(c) > 1}, key="rwx".index)
                    self.bad(kp, f"permission {quote(perm)} of {quote(key)} repeats "
                                 f"{quote(''.join(twice))}")
                ok = False
                continue
            files[key] = normal
        transitions = {}
        raw = self.subtable(table, at, "exec")
        if raw is None:
            ok = False
            raw = {}
        for key, target in raw.items():
            kp = at + ("exec", key)
            if not self.clean_path(key, kp, "transition"):
                ok = False
                continue
            if not isinstance(target, str):
                self.bad(kp, f"transition of {quote(key)} must name a pea (a string), "
                             f"not {type_name(target)}")
                ok = False
                continue
            if target not in names:
                self.bad(kp, f"transition of {quote(key)} goes to unknown pea {quote(target)} "
                             f"(peas: {', '.join(names)})")
                ok = False
                continue
            transitions[key] = target
        connect, bind = False, ()
        if "net" in table:
            net = self.table(table["net"], at + ("net",), PEA_NET_KEYS, f"[pea.{name}.net]")
            if net is None:
                ok = False
            else:
                connect = self.typed(net, at + ("net",), "connect", bool, "a boolean")
                if "connect" in net and connect is None:
                    ok = False
                bind = self.ports(net, at + ("net",))
                if bind is None:
                    ok = False
        used = self.use(table, at, files)
        if not ok or used is None:
            return None
        files, origins, conflicts = used
        return Pea(name, files=files, exec=transitions, complain=bool(complain),
                   connect=bool(connect), bind=bind, origins=origins, conflicts=conflicts)

    def use(self, table: dict, at: tuple, own: dict[str, str]):
        """The pea's files rules with those of its ``use`` sets: (files,
        origins, conflicts), or None after reporting a problem.

        Sets are taken in the order listed, a later set's rule replacing an
        earlier one's for the same key; the pea's own rule for a key always
        wins. Where the letters differ, ``conflicts`` records it for
        ``pod rules check``'s warnings: a silent override would hide that
        the set meant something else."""
        from .rulesets import SetError, load_set

        if "use" not in table:
            return own, {}, ()
        value = table["use"]
        kp = at + ("use",)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            self.bad(kp, 'use must be an array of rule set names (strings), like '
                         '["loader", "libc"]')
            return None
        merged: dict[str, str] = {}
        origins: dict[str, str] = {}
        conflicts = []
        ok = True
        for i, name in enumerate(value):
            if name in value[:i]:
                self.bad(kp, f"use lists rule set {quote(name)} twice")
                ok = False
                continue
            if name not in self.sets:
                try:
                    self.sets[name] = load_set(name, self.base_dir)
                except SetError as e:
                    self.sets[name] = e
            rules = self.sets[name]
            if isinstance(rules, SetError):
                for message in rules.messages:
                    self.bad(kp, message)
                ok = False
                continue
            for key, perm in rules.items():
                if key in merged and merged[key] != perm:
                    conflicts.append((key, perm, name, merged[key], origins[key]))
                merged[key] = perm
                origins[key] = name
        if not ok:
            return None
        for key, perm in own.items():
            if key in merged:
                if merged[key] != perm:
                    conflicts.append((key, perm, None, merged[key], origins[key]))
                del origins[key]
            merged[key] = perm
        return merged, origins, tuple(conflicts)

    def ports(self, net: dict, at: tuple) -> tuple[int, ...] | None:
        if "bind" not in net:
            return ()
        value = net["bind"]
        kp = at + ("bind",)
        if not isinstance(value, list):
            self.bad(kp, f"{dotted(kp)} must be an array of port numbers, not {type_name(value)}")
            return None
        ports = []
        ok = True
        for port in value:
            if type(port) is not int:
                self.bad(kp, f"bind port {_show(port)} is not an integer")
                ok = False
            elif not 1 <= port <= 65535:
                self.bad(kp, f"bind port {port} is outside 1-65535")
                ok = False
            elif port in ports:
                self.bad(kp, f"bind port {port} is listed twice")
                ok = False
            else:
                ports.append(port)
        return tuple(ports) if ok else None


def _show(value) -> str:
    """A value as the user wrote it (roughly), for messages."""
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + "}"
    return str(value)
