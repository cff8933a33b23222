"""Type ids from the kernel's own BTF (/sys/kernel/btf/vmlinux).

The programs of pods/netbpf.py that decide on abstract Unix socket names call
two kernel functions (kfuncs) and name one kernel type, by their BTF ids in
the running kernel: ``bpf_cast_to_kern_ctx`` (the hook's context as the
kernel's struct bpf_sock_addr_kern, whose ``uaddr`` is the kernel's copy of
the address), ``bpf_rdonly_cast`` (that pointer read as a struct
sockaddr_un) and ``sockaddr_un``. Ids differ from one kernel build to the
next, so they are looked up here, in the format's own terms: a header, then
one record per type (id 1, 2, ...), each 12 bytes plus a kind-specific tail.
"""

from __future__ import annotations

import struct

VMLINUX = "/sys/kernel/btf/vmlinux"
KIND_STRUCT, KIND_FUNC = 4, 12

# Bytes after the 12-byte common record, by kind, for ``vlen`` members.
_TAIL = {1: lambda v: 4, 2: lambda v: 0, 3: lambda v: 12, 4: lambda v: 12 * v,
         5: lambda v: 12 * v, 6: lambda v: 8 * v, 7: lambda v: 0, 8: lambda v: 0,
         9: lambda v: 0, 10: lambda v: 0, 11: lambda v: 0, 12: lambda v: 0,
         13: lambda v: 8 * v, 14: lambda v: 4, 15: lambda v: 12 * v, 16: lambda v: 0,
         17: lambda v: 4, 18: lambda v: 0, 19: lambda v: 12 * v}


class BtfError(OSError):
    pass


def type_ids(wanted: set[tuple[int, str]], path: str = VMLINUX) -> dict[tuple[int, str], int]:
    """{(kind, name): id} for each wanted (kind, name); BtfError if the
    kernel has no BTF, or lacks one of them (it names the first missing)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BtfError(e.errno, f"{path}: {e.strerror} (the kernel has no BTF: "
                                f"CONFIG_DEBUG_INFO_BTF)") from None
    magic, _, _, hdr_len, type_off, type_len, str_off, _ = struct.unpack_from("<HBBIIIII", data)
    if magic != 0xEB9F:
        raise BtfError(0, f"{path}: not BTF")
    types, strs = hdr_len + type_off, hdr_len + str_off
    names = {n.encode(): (k, n) for k, n in wanted}
    found: dict[tuple[int, str], int] = {}
    pos, tid = types, 1
    while pos < types + type_len:
        name_off, info, _ = struct.unpack_from("<III", data, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if name_off:
            end = data.index(b"\0", strs + name_off)
            key = names.get(data[strs + name_off:end])
            if key is not None and key[0] == kind:
                found[key] = tid
        tail = _TAIL.get(kind)
        if tail is None:
            raise BtfError(0, f"{path}: unknown BTF kind {kind}")
        pos += 12 + tail(vlen)
        tid += 1
    for key in sorted(wanted):
        if key not in found:
            raise BtfError(0, f"the kernel's BTF has no {key[1]} (needs Linux 6.7 or later)")
    return found
