"""Peas and the network (SECURITY.md, "Network"): bind() only to a pea's listed ports,
connect() and sends with an address only with connect = true; EACCES
otherwise. Unix sockets are files (PeaFS rules them) and pass here.

The rules are cgroup socket-address BPF programs on each pea's cgroup
(pods/netbpf.py): the kernel runs them on its own copy of the address, in
the call itself. test_bind_race_never_binds_a_refused_port attacks that: a
thread flips the port while another binds. Run in the stand-in pod of
testbed/seccomp_harness.py, which attaches the same programs.
"""

from __future__ import annotations

import errno
import socket

from pods.seccomp_syscalls import NR
from testbed.seccomp_harness import Pea, fake_pod

PEAS = {"a": Pea("a", connect=True, bind=[8080, 80]),
        "b": Pea("b", connect=False, bind=[8081])}
EACCES = -errno.EACCES


async def test_bind_to_listed_ports_only():
    async with fake_pod(PEAS) as pod:
        a = await pod.agent("a")
        b = await pod.agent("b")
        assert await a.call("bind", socket.AF_INET, 8080, listen=True) == 8080
        assert await a.call("bind", socket.AF_INET, 8081) == EACCES
        assert await a.call("bind", socket.AF_INET, 9999) == EACCES
        assert await a.call("bind", socket.AF_INET6, 8080) == 8080
        assert await a.call("bind", socket.AF_INET6, 9999) == EACCES
        assert await a.call("bind", socket.AF_INET, 8080, socket.SOCK_DGRAM) == 8080
        assert await a.call("bind", socket.AF_INET, 9998, socket.SOCK_DGRAM) == EACCES
        assert await b.call("bind", socket.AF_INET, 8081) == 8081
        assert await b.call("bind", socket.AF_INET, 8080) == EACCES
        # port 0: an ephemeral port chosen by the kernel, what clients do
        assert await b.call("bind", socket.AF_INET, 0) > 1024
        # a port below 1024 goes by the rule alone, not by a capability
        # (a pod's network namespace is the host's: no pod process has one)
        assert await a.call("bind", socket.AF_INET, 80) == 80
        user = await pod.agent("a")
        assert await user.call("become", 1000) == 0
        assert await user.call("bind", socket.AF_INET6, 80) == 80
        assert await user.call("bind", socket.AF_INET, 81) == EACCES
        # errors of the bind itself come back unchanged (port already bound)
        assert await a.call("bind", socket.AF_INET, 8080) == -errno.EADDRINUSE


async def test_connect_needs_connect_true():
    async with fake_pod(PEAS) as pod:
        a = await pod.agent("a")
        b = await pod.agent("b")
        assert await b.call("bind", socket.AF_INET, 8081, listen=True) == 8081
        assert await a.call("bind", socket.AF_INET, 8080, listen=True) == 8080
        assert await b.call("connect", socket.AF_INET, 8080) == EACCES
        assert await b.call("connect", socket.AF_INET6, 8080) == EACCES
        assert await a.call("connect", socket.AF_INET, 8081) == 0
        assert await a.call("connect", socket.AF_INET, 8080) == 0
        # nothing listens on 9: the kernel's answer, unchanged
        assert await a.call("connect", socket.AF_INET, 9) == -errno.ECONNREFUSED


async def test_sends_with_an_address_need_connect_true():
    async with fake_pod(PEAS) as pod:
        a = await pod.agent("a")
        b = await pod.agent("b")
        assert await a.call("bind", socket.AF_INET, 8080, socket.SOCK_DGRAM) == 8080
        assert await b.call("udp_sendto", 8080) == EACCES
        assert await b.call("udp_sendmsg", 8080) == EACCES
        assert await a.call("udp_sendto", 8080, b"one") == 3
        assert await a.call("udp_recv", 8080) == b"one"
        assert await a.call("udp_sendmsg", 8080, b"two") == 3
        assert await a.call("udp_recv", 8080) == b"two"
        # without an address, an unconnected UDP socket has no peer: the
        # kernel's own error
        assert await b.call("udp_sendmsg", 8080, b"x", False) == -errno.EDESTADDRREQ
        # Unix sockets are files: not a network
        assert await b.call("unix_pair_sendmsg") == (5, b"hello")


async def test_a_server_without_connect_answers_on_accepted_connections():
    """connect = false refuses addresses, not replies: sendmsg without an
    address on an accepted connection goes through."""
    async with fake_pod(PEAS) as pod:
        a = await pod.agent("a")
        b = await pod.agent("b")
        assert await b.call("bind", socket.AF_INET, 8081, listen=True) == 8081
        key = await a.call("tcp_connect_keep", 8081)
        assert key > 0
        assert await b.call("accept_sendmsg", 8081, b"220 hello") == 9
        assert await a.call("recv", key) == b"220 hello"


async def test_bind_race_never_binds_a_refused_port():
    """One thread flips the port of the sockaddr between 8080 (listed) and
    9999 (not) while another thread binds with it, thousands of times."""
    async with fake_pod(PEAS) as pod:
        a = await pod.agent("a")
        bound, errs, n_ok = await a.call("bind_race", 8080, 9999, 3000, timeout=120)
        assert bound in ([8080], [])
        assert set(errs) <= {errno.EACCES}
        assert n_ok + sum(errs.values()) == 3000
        # both outcomes happened: the race was real
        assert n_ok > 0 and errs.get(errno.EACCES, 0) > 0


async def test_sendmmsg_follows_the_same_rules():
    async with fake_pod(PEAS) as pod:
        a = await pod.agent("a")
        b = await pod.agent("b")
        assert await a.call("bind", socket.AF_INET, 8080, socket.SOCK_DGRAM) == 8080
        assert await b.call("udp_sendmmsg", 8080, True) == (EACCES, [])
        assert await a.call("udp_sendmmsg", 8080, True) == (2, [1, 1])
        # without addresses, on a connected socket (pea a may connect)
        assert await a.call("udp_sendmmsg", 8080, False) == (2, [1, 1])
        # in pea b no UDP socket can be connected; without addresses the
        # kernel answers for an unconnected socket
        assert await b.call("udp_sendmmsg", 8080, False, 2, False) == (-errno.EDESTADDRREQ, [])


async def test_other_socket_families():
    async with fake_pod(PEAS) as pod:
        a = await pod.agent("a")
        b = await pod.agent("b")
        # families the rules do not judge (raw frames, vsock) exist for no pea
        for family in (socket.AF_PACKET, socket.AF_VSOCK):
            for agent in (a, b):
                assert await agent.call("syscall", NR["socket"], family, socket.SOCK_DGRAM, 0) \
                    == (-1, errno.EAFNOSUPPORT)
        # netlink is the pod's own kernel configuration: not a network
        assert await a.call("family_bind", socket.AF_NETLINK) == 0
        assert await b.call("family_bind", socket.AF_NETLINK) == 0
