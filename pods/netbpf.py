"""The peas' network rules, decided by the kernel: cgroup socket-address BPF.

Each pea is a cgroup (kernel/cgroup.py). To it the daemon attaches small BPF
programs at the kernel's socket-address hooks (``BPF_CGROUP_INET{4,6}_BIND``,
``_CONNECT``, ``UDP{4,6}_SENDMSG``). The kernel runs them inside bind(),
connect() and every send with an address, on *its own copy* of the address,
for every process of the pea and of its sub-cgroups:

- bind: port 0 or a port in the pea's ``bind`` list; the program's answer 3
  ("allowed, without CAP_NET_BIND_SERVICE") lets a listed port below 1024
  be bound by any user: the rule decides, not a capability.
- connect and sends with an address (TCP, UDP, IPv4, IPv6, v4-mapped):
  refused if the pea has ``connect = false``; refused to the host's own
  addresses unless the policy's ``[pod.net] host = true``.

A refusal fails with EACCES (``bpf_set_retval``). Why here and not in the
seccomp supervisor: the decision is on the address the kernel will use, so
no sibling thread can change the sockaddr, or swap the descriptor for
another socket, after the check; and it costs a few instructions in the
kernel instead of a round trip to the daemon. Pod processes cannot detach
them: bpf() is refused by the seccomp filter, and the cgroups belong to the
host.

Every refusal is also pushed, as a 48-byte record, onto a BPF queue map of
the pod; the daemon drains it into the audit log (``drain``). A pea in
complain mode gets the same record, and its call is allowed.

The programs are assembled here, from a dozen kinds of instruction (no
compiler, no libbpf): see ``_Asm``. The policy's lists are compiled into
comparisons; a pea's program is rebuilt when its pod starts.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import struct
from dataclasses import dataclass

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_SYS_bpf = 321   # x86_64

# bpf(2) commands, map and program types, attach types (<linux/bpf.h>)
BPF_MAP_CREATE = 0
BPF_MAP_UPDATE_ELEM = 2
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_MAP_LOOKUP_AND_DELETE_ELEM = 21
BPF_MAP_TYPE_QUEUE = 22
BPF_MAP_TYPE_LRU_HASH = 9
BPF_PROG_TYPE_CGROUP_SOCK_ADDR = 18
BPF_F_ALLOW_MULTI = 2
ATTACH = {"bind4": 8, "bind6": 9, "connect4": 10, "connect6": 11,
          "sendmsg4": 14, "sendmsg6": 15,
          # Unix socket addresses (Linux 6.7): where abstract names are judged
          "connect_unix": 49, "sendmsg_unix": 50}
UNIX_HOOKS = ("connect_unix", "sendmsg_unix")
# helpers
_MAP_LOOKUP_ELEM = 1
_GET_CURRENT_PID_TGID = 14
_GET_CURRENT_UID_GID = 15
_MAP_PUSH_ELEM = 87
_SET_RETVAL = 187

# struct bpf_sock_addr: the offsets the programs read
_USER_FAMILY, _USER_IP4, _USER_IP6, _USER_PORT = 0, 4, 8, 24

# The audit record (struct on the program's stack, at fp-48):
# u64 pid_tgid, u32 op, u32 pea index, u32 family, u32 port (network order),
# u32 addr[4], u32 uid, u32 complain.
RECORD = struct.Struct("<QIIII16sII")
OPS = {1: "bind", 2: "connect", 3: "sendmsg", 4: "connect", 5: "sendmsg"}
AF_UNIX = 1

# The key of the pod's map of abstract Unix names: u32 length of the name
# (with its leading NUL), then the name, zero-padded to sun_path's 108 bytes.
# The value: u32 index of the pea whose process bound it.
UNIX_KEY = struct.Struct("<I108s")
UNIX_NAMES_MAX = 16384
# struct bpf_sock_addr_kern: the kernel's copy of the address and its length
_KCTX_UADDR, _KCTX_UADDRLEN = 8, 32
QUEUE_SIZE = 4096


class BpfError(OSError):
    pass


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    rc = _libc.syscall(ctypes.c_long(_SYS_bpf), ctypes.c_int(cmd), attr,
                       ctypes.c_uint(len(attr)))
    if rc < 0:
        e = ctypes.get_errno()
        raise BpfError(e, os.strerror(e))
    return rc


class _Asm:
    """An eBPF program under construction: instructions and jump labels."""

    def __init__(self):
        self.code: list[list] = []     # [opcode, dst, src, off, imm]
        self.labels: dict[str, int] = {}
        self.fixups: list[tuple[int, str]] = []

    def _emit(self, op, dst=0, src=0, off=0, imm=0):
        self.code.append([op, dst, src, off, imm])

    def here(self, label):
        self.labels[label] = len(self.code)

    def mov(self, dst, imm):            # dst = imm (64-bit)
        self._emit(0xB7, dst, 0, 0, imm)

    def movr(self, dst, src):           # dst = src
        self._emit(0xBF, dst, src)

    def add(self, dst, imm):            # dst += imm
        self._emit(0x07, dst, 0, 0, imm)

    def ldw(self, dst, src, off):       # dst = *(u32 *)(src + off)
        self._emit(0x61, dst, src, off)

    def stw(self, dst, off, src):       # *(u32 *)(dst + off) = src
        self._emit(0x63, dst, src, off)

    def stdw(self, dst, off, src):      # *(u64 *)(dst + off) = src
        self._emit(0x7B, dst, src, off)

    def stiw(self, dst, off, imm):      # *(u32 *)(dst + off) = imm
        self._emit(0x62, dst, 0, off, imm)

    def ld_map(self, dst, fd):          # dst = the map behind fd (a 2-slot load)
        self._emit(0x18, dst, 1, 0, fd)    # src 1: BPF_PSEUDO_MAP_FD
        self._emit(0, 0, 0, 0, 0)

    def jeq32(self, reg, imm, label):   # if (u32)reg == imm goto label
        self.fixups.append((len(self.code), label))
        self._emit(0x16, reg, 0, 0, _s32(imm))

    def jne32(self, reg, imm, label):
        self.fixups.append((len(self.code), label))
        self._emit(0x56, reg, 0, 0, _s32(imm))

    def ja(self, label):
        self.fixups.append((len(self.code), label))
        self._emit(0x05)

    def call(self, helper):
        self._emit(0x85, 0, 0, 0, helper)

    def kcall(self, btf_id):            # a kernel function, by its BTF id
        self._emit(0x85, 0, 2, 0, btf_id)  # src 2: BPF_PSEUDO_KFUNC_CALL

    def ldb(self, dst, src, off):       # dst = *(u8 *)(src + off)
        self._emit(0x71, dst, src, off)

    def lddw(self, dst, src, off):      # dst = *(u64 *)(src + off)
        self._emit(0x79, dst, src, off)

    def stb(self, dst, off, src):       # *(u8 *)(dst + off) = src
        self._emit(0x73, dst, src, off)

    def jle(self, reg, imm, label):     # if reg <= imm (unsigned, 64-bit) goto label
        self.fixups.append((len(self.code), label))
        self._emit(0xB5, reg, 0, 0, imm)

    def jeq(self, reg, imm, label):     # if reg == imm (64-bit) goto label
        self.fixups.append((len(self.code), label))
        self._emit(0x15, reg, 0, 0, imm)

    def exit(self):
        self._emit(0x95)

    def assemble(self) -> bytes:
        for at, label in self.fixups:
            self.code[at][3] = self.labels[label] - at - 1
        return b"".join(struct.pack("<BBhi", op, (src << 4) | dst, off, imm)
                        for op, dst, src, off, imm in self.code)


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _word(b: bytes) -> int:
    """4 bytes of an address as the u32 a program loads from them."""
    return struct.unpack("<I", b)[0]


def _port_word(port: int) -> int:
    """user_port as loaded: the port in network order in the low 16 bits."""
    return _word(struct.pack("!H", port) + b"\0\0")


@dataclass(frozen=True)
class PeaNet:
    """What a pea's programs decide on."""
    index: int
    connect: bool
    bind: frozenset
    complain: bool


def _program(hook: str, pea: PeaNet, host4: list[bytes], host6: list[bytes],
             queue_fd: int) -> bytes:
    a = _Asm()
    a.movr(6, 1)                                        # r6 = ctx
    allow_ret = 3 if hook.startswith("bind") else 1
    v6 = hook.endswith("6")
    op = 1 if hook.startswith("bind") else 2 if hook.startswith("connect") else 3
    if op == 1:
        a.ldw(2, 6, _USER_PORT)
        a.jeq32(2, 0, "allow")
        for port in sorted(pea.bind):
            a.jeq32(2, _port_word(port), "allow")
        a.ja("refuse")
    elif not pea.connect:
        a.ja("refuse")
    elif not v6:
        a.ldw(2, 6, _USER_IP4)
        for addr in host4:
            a.jeq32(2, _word(addr), "refuse")
    else:
        for i in range(4):
            a.ldw(2 + i, 6, _USER_IP6 + 4 * i)
        for n, addr in enumerate(host6):
            for i in range(4):
                a.jne32(2 + i, _word(addr[4 * i:4 * i + 4]), f"next{n}")
            a.ja("refuse")
            a.here(f"next{n}")
    # The verifier refuses unreachable instructions: emit only what a path reaches.
    if op != 1 and not pea.connect:
        pass                                            # everything is refused
    else:
        a.here("allow")
        a.mov(0, allow_ret)
        a.exit()
    if not any(label == "refuse" for _, label in a.fixups):
        return a.assemble()                             # nothing is refused
    a.here("refuse")

    def address():
        a.ldw(2, 6, _USER_FAMILY)
        a.stw(10, -32, 2)
        a.ldw(2, 6, _USER_PORT)
        a.stw(10, -28, 2)
        if v6:
            for i in range(4):
                a.ldw(2, 6, _USER_IP6 + 4 * i)
                a.stw(10, -24 + 4 * i, 2)
        else:
            a.ldw(2, 6, _USER_IP4)
            a.stw(10, -24, 2)
            for i in range(1, 4):
                a.stiw(10, -24 + 4 * i, 0)
    _record_and_refuse(a, op, pea, queue_fd, allow_ret, address)
    return a.assemble()


def _record_and_refuse(a: _Asm, op: int, pea: PeaNet, queue_fd: int, allow_ret: int,
                       address) -> None:
    """The end of every program at its "refuse" label: the audit record at
    fp-48 (r10 is the frame pointer; ``address()`` emits the family, port
    and address words), pushed onto the pod's queue, then EACCES, or in a
    complain pea ``allow_ret``."""
    a.call(_GET_CURRENT_PID_TGID)
    a.stdw(10, -48, 0)
    a.call(_GET_CURRENT_UID_GID)
    a.stw(10, -8, 0)
    a.stiw(10, -40, op)
    a.stiw(10, -36, pea.index)
    address()
    a.stiw(10, -4, 1 if pea.complain else 0)
    a.ld_map(1, queue_fd)
    a.movr(2, 10)
    a.add(2, -48)
    a.mov(3, 0)
    a.call(_MAP_PUSH_ELEM)       # a full queue drops the record, not the decision
    _answer(a, pea, allow_ret, errno.EACCES)


def _answer(a: _Asm, pea: PeaNet, allow_ret: int, err: int) -> None:
    """Fail the call with ``err``, or in a complain pea let it through."""
    if pea.complain:
        a.mov(0, allow_ret)
    else:
        a.mov(1, -err)
        a.call(_SET_RETVAL)
        a.mov(0, 0)
    a.exit()


def _unix_program(hook: str, pea: PeaNet, names_fd: int, queue_fd: int,
                  ids: dict) -> bytes:
    """connect() and sends to a Unix address: an abstract name is reachable
    from the pea whose process bound it (the supervisor performs and records
    every such bind: pods/supervisor.py ``_do_bind``), and from no other
    (EACCES, logged); a name bound behind the supervisor's back (an address
    length of 16 or 28, which the filter lets through; an implicit autobind)
    is in nobody's reach (ECONNREFUSED, fail closed). Pathnames are files:
    PeaFS decides those, not this."""
    a = _Asm()
    key = -160                      # the map key on the stack: fp-160 .. fp-49
    a.movr(6, 1)                                        # r6 = ctx
    a.movr(1, 6)
    a.kcall(ids["cast"])                                # r7 = the kernel's context
    a.movr(7, 0)
    a.ldw(8, 7, _KCTX_UADDRLEN)                         # r8 = address length
    a.jle(8, 2, "allow")                                # no name at all
    a.lddw(1, 7, _KCTX_UADDR)
    a.mov(2, ids["sockaddr_un"])
    a.kcall(ids["rdonly"])                              # r9 = (struct sockaddr_un *)
    a.movr(9, 0)
    a.ldb(1, 9, 2)
    a.jne32(1, 0, "allow")                              # sun_path[0] != 0: a pathname
    a.add(8, -2)                                        # r8 = name length, NUL included
    a.mov(1, 0)
    for off in range(key, key + UNIX_KEY.size, 8):
        a.stdw(10, off, 1)
    a.stw(10, key, 8)
    # Only the name's own bytes: the kernel's copy is not cleared past its length.
    for i in range(108):
        a.jle(8, i, f"copied{i}")
        a.ldb(1, 9, 2 + i)
        a.stb(10, key + 4 + i, 1)
        a.here(f"copied{i}")
    a.ld_map(1, names_fd)
    a.movr(2, 10)
    a.add(2, key)
    a.call(_MAP_LOOKUP_ELEM)
    a.jeq(0, 0, "unknown")
    a.ldw(1, 0, 0)
    a.jeq32(1, pea.index, "allow")
    a.ja("refuse")
    a.here("allow")
    a.mov(0, 1)
    a.exit()
    # A name no pea is known to have bound: nobody's, or bound where the
    # supervisor did not see it (see the docstring). What the kernel says
    # of a name nobody bound, whoever asks: a client waiting for its server
    # retries on ECONNREFUSED. Not a refusal of a rule: not logged.
    a.here("unknown")
    _answer(a, pea, 1, errno.ECONNREFUSED)
    a.here("refuse")

    def address():
        a.stiw(10, -32, AF_UNIX)
        a.stiw(10, -28, 0)
        for i in range(4):                              # the name's first 16 bytes
            a.ldw(1, 10, key + 4 + 4 * i)
            a.stw(10, -24 + 4 * i, 1)
    _record_and_refuse(a, 4 if hook == "connect_unix" else 5, pea, queue_fd, 1, address)
    return a.assemble()


def unix_kfunc_ids() -> dict:
    """The BTF ids the Unix programs need (pods/btf.py), or BtfError."""
    from pods import btf

    got = btf.type_ids({(btf.KIND_FUNC, "bpf_cast_to_kern_ctx"),
                        (btf.KIND_FUNC, "bpf_rdonly_cast"),
                        (btf.KIND_STRUCT, "sockaddr_un")})
    return {"cast": got[(btf.KIND_FUNC, "bpf_cast_to_kern_ctx")],
            "rdonly": got[(btf.KIND_FUNC, "bpf_rdonly_cast")],
            "sockaddr_un": got[(btf.KIND_STRUCT, "sockaddr_un")]}


def create_unix_names() -> int:
    """The pod's map of abstract Unix names -> pea index (fd). LRU: a name
    pushed out is in nobody's reach (fail closed), never in another's."""
    attr = ctypes.create_string_buffer(72)
    struct.pack_into("<IIIII", attr, 0, BPF_MAP_TYPE_LRU_HASH, UNIX_KEY.size, 4,
                     UNIX_NAMES_MAX, 0)
    return _bpf(BPF_MAP_CREATE, attr)


def unix_key(name: bytes) -> bytes:
    """The map key of abstract name ``name`` (sun_path's bytes, leading NUL
    included, as long as the address says)."""
    return UNIX_KEY.pack(len(name), name)


def record_unix_name(names_fd: int, name: bytes, pea_index: int) -> None:
    """Note that a process of pea ``pea_index`` bound abstract ``name``."""
    k = ctypes.create_string_buffer(unix_key(name), UNIX_KEY.size)
    v = ctypes.create_string_buffer(struct.pack("<I", pea_index), 4)
    attr = ctypes.create_string_buffer(32)
    struct.pack_into("<IIQQQ", attr, 0, names_fd, 0, ctypes.addressof(k),
                     ctypes.addressof(v), 0)       # flags 0: BPF_ANY
    _bpf(BPF_MAP_UPDATE_ELEM, attr)


def create_queue() -> int:
    """The pod's queue of refusal records (fd)."""
    attr = ctypes.create_string_buffer(72)
    struct.pack_into("<IIIII", attr, 0, BPF_MAP_TYPE_QUEUE, 0, RECORD.size, QUEUE_SIZE, 0)
    return _bpf(BPF_MAP_CREATE, attr)


def _load(insns: bytes, hook: str) -> int:
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 16)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQIIQII16sII", attr, 0, BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
                     len(insns) // 8, ctypes.addressof(code), ctypes.addressof(lic),
                     1, len(log), ctypes.addressof(log), 0, 0,
                     f"pp_{hook}"[:15].encode(), 0, ATTACH[hook])
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except BpfError as e:
        detail = log.value.decode(errors="replace").strip().splitlines()[-3:]
        raise BpfError(e.errno, f"loading the {hook} program: {e.strerror}"
                                f"{': ' + ' | '.join(detail) if detail else ''}") from None


def _attach(prog_fd: int, cgroup_fd: int, hook: str) -> None:
    attr = ctypes.create_string_buffer(24)
    struct.pack_into("<IIII", attr, 0, cgroup_fd, prog_fd, ATTACH[hook], BPF_F_ALLOW_MULTI)
    _bpf(BPF_PROG_ATTACH, attr)


def host_addresses_packed(addresses: list[str]) -> tuple[list[bytes], list[bytes]]:
    """(IPv4 addresses, IPv6 addresses incl. the v4-mapped form of each IPv4
    one), packed in network order."""
    v4, v6 = [], []
    for text in addresses:
        ip = ipaddress.ip_address(text)
        if ip.version == 4:
            v4.append(ip.packed)
            v6.append(ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed).packed)
        else:
            v6.append(ip.packed)
    return v4, v6


def attach_pea(cgroup_dir: str, pea: PeaNet, host_addresses: list[str], queue_fd: int,
               names_fd: int, ids: dict, keep: bool = False) -> dict[str, int]:
    """Load the eight programs for ``pea`` and attach them to its cgroup.
    ``host_addresses``: the addresses connect/send may not reach ([] when
    the policy allows the host); ``names_fd``: the pod's abstract Unix
    names (``create_unix_names``); ``ids``: ``unix_kfunc_ids()``. With
    ``keep``, returns {hook: program fd}, the caller's to ``detach`` them
    later (a policy reload); else closes them (the attachment holds a
    program) and returns {}. Raises BpfError naming the failing step."""
    host4, host6 = host_addresses_packed(host_addresses)
    kept: dict[str, int] = {}
    cg = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for hook in ATTACH:
            if hook in UNIX_HOOKS:
                insns = _unix_program(hook, pea, names_fd, queue_fd, ids)
            else:
                insns = _program(hook, pea, host4, host6, queue_fd)
            prog = _load(insns, hook)
            try:
                _attach(prog, cg, hook)
            except BpfError as e:
                os.close(prog)
                raise BpfError(e.errno, f"attaching the {hook} program to {cgroup_dir}: "
                                        f"{e.strerror}") from None
            if keep:
                kept[hook] = prog
            else:
                os.close(prog)
    except BaseException:
        for fd in kept.values():
            os.close(fd)
        raise
    finally:
        os.close(cg)
    return kept


def detach(cgroup_dir: str, progs: dict[str, int]) -> None:
    """Detach the programs ``attach_pea(..., keep=True)`` returned, and
    close them. With several programs on a hook (BPF_F_ALLOW_MULTI) the
    kernel runs them all and a call passes only if each allows it: a reload
    attaches the new ones first, so the pea is never without its rules."""
    try:
        suspend(cgroup_dir, progs)
    finally:
        for prog in progs.values():
            os.close(prog)


def suspend(cgroup_dir: str, progs: dict[str, int]) -> None:
    """Detach ``progs`` ({hook: program fd}) from the cgroup, keeping the
    descriptors for ``resume``. Every hook is tried; the first error is
    raised after. Only for a pea none of whose processes can run (a
    checkpoint holds the pod still: pods/checkpoint.py)."""
    cg = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        first = None
        for hook, prog in progs.items():
            attr = ctypes.create_string_buffer(24)
            struct.pack_into("<IIII", attr, 0, cg, prog, ATTACH[hook], 0)
            try:
                _bpf(BPF_PROG_DETACH, attr)
            except BpfError as e:
                first = first or e
        if first is not None:
            raise first
    finally:
        os.close(cg)


def resume(cgroup_dir: str, progs: dict[str, int]) -> None:
    """Attach again what ``suspend`` detached (every hook tried, the first
    error raised after)."""
    cg = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        first = None
        for hook, prog in progs.items():
            try:
                _attach(prog, cg, hook)
            except BpfError as e:
                first = first or e
        if first is not None:
            raise first
    finally:
        os.close(cg)


@dataclass(frozen=True)
class Refusal:
    op: str
    pea_index: int
    tgid: int          # host pid of the calling process
    uid: int           # host uid
    address: str       # "ADDR:PORT" or "[ADDR]:PORT"
    complain: bool


def drain(queue_fd: int, limit: int = 4096) -> list[Refusal]:
    """Take the records waiting in the queue (non-blocking)."""
    out = []
    value = ctypes.create_string_buffer(RECORD.size)
    attr = ctypes.create_string_buffer(32)
    struct.pack_into("<IIQQQ", attr, 0, queue_fd, 0, 0, ctypes.addressof(value), 0)
    for _ in range(limit):
        try:
            _bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, attr)
        except BpfError as e:
            if e.errno == errno.ENOENT:
                break
            raise
        pid_tgid, op, index, family, port, addr, uid, complain = RECORD.unpack(value.raw)
        port = struct.unpack("!H", struct.pack("<I", port)[:2])[0]
        if family == AF_UNIX:
            # "@name" as ss(8) shows abstract names; the record holds 16 bytes.
            text = addr[1:].rstrip(b"\0").decode("utf-8", "backslashreplace")
            where = "@" + text + ("..." if len(addr[1:].rstrip(b"\0")) >= 15 else "")
        elif family == 10:
            where = f"[{ipaddress.IPv6Address(addr)}]:{port}"
        else:
            where = f"{ipaddress.IPv4Address(addr[:4])}:{port}"
        out.append(Refusal(OPS.get(op, "?"), index, pid_tgid >> 32, uid, where, bool(complain)))
    return out
