"""The pod's network: loopback only, or a veth pair to the host.

The pod's network namespace is created empty by unshare (loopback down) by
the keeper while it is still host root (pods/startup.py, step A3c), so the namespace
belongs to the host's user namespace and no pod process holds a network
capability over it. ``loopback_up`` runs inside it then. ``add_veth`` runs
in the daemon, as host root: it
creates a pair whose host end stays on the host with the policy's .1 address
and whose other end is created directly in the pod's namespace (``netns
PID``) as eth0, so it never exists on the host under a name a pod could
collide with. Deleting the host end deletes both ends; the kernel also
deletes the pair when the pod's namespace dies.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import socket
import struct
import subprocess
import zlib

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def host_ifname(pod: str) -> str:
    """A host interface name for the pod: at most 15 bytes (IFNAMSIZ-1)."""
    return f"pp{zlib.crc32(pod.encode()) & 0xffffffff:08x}"


def _ip(*args: str, ns_pid: int | None = None) -> None:
    cmd = ["ip", *args]
    if ns_pid is not None:
        cmd = ["nsenter", f"--net=/proc/{ns_pid}/ns/net", "--", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        raise OSError(f"{' '.join(cmd)}: {r.stderr.strip()}")


def address_owners() -> dict[str, str]:
    """address -> name of the host interface that has it (loopback too)."""
    r = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        raise OSError(f"ip -j addr show: {r.stderr.strip()}")
    out = {}
    for iface in json.loads(r.stdout or "[]"):
        for a in iface.get("addr_info", []):
            if a.get("local"):
                out[a["local"]] = iface.get("ifname", "?")
    return out


def host_addresses() -> list[str]:
    """Every address of the host's network namespace (the daemon's: it
    shares it), loopback's excepted: a pod's 127.0.0.1 is its own."""
    return sorted(a for a in address_owners() if not ipaddress.ip_address(a).is_loopback)


def add_veth(pod: str, ns_pid: int, net) -> str:
    """Create the veth pair for ``net`` (rules.Net), return the host end's name."""
    host = host_ifname(pod)
    _ip("link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", str(ns_pid))
    try:
        _ip("addr", "add", f"{net.host_ip}/{net.prefixlen}", "dev", host)
        _ip("link", "set", host, "up")
        _ip("addr", "add", f"{net.ip}/{net.prefixlen}", "dev", "eth0", ns_pid=ns_pid)
        _ip("link", "set", "eth0", "up", ns_pid=ns_pid)
        _ip("route", "add", "default", "via", net.host_ip, ns_pid=ns_pid)
    except OSError:
        del_veth(pod)
        raise
    return host


def del_veth(pod: str) -> None:
    subprocess.run(["ip", "link", "del", host_ifname(pod)], capture_output=True, timeout=20)


def veth_exists(pod: str) -> bool:
    r = subprocess.run(["ip", "link", "show", host_ifname(pod)], capture_output=True, timeout=20)
    return r.returncode == 0
