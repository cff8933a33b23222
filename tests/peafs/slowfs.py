"""slowfs: a tiny pyfuse3 file system whose fsync, read, write and readdir can be held.

    python slowfs.py MOUNTPOINT GATEDIR

It serves ``data`` (DATA, 256 KiB), ``small`` (SMALL) and ``dir/`` (holding
``a`` and ``b``). fsync, read, write and the listing of ``dir`` first create
GATEDIR/started-<op> (op: fsync, read, write, readdir), then wait while
GATEDIR/hold-<op> exists (polling, at most HOLD_MAX seconds). lookup,
getattr, open and the rest answer at once. Files are opened direct_io, so
every read and write reaches the handler (no page cache in between).

Mounted allow_other; GATEDIR/ready appears once the mount is live. A separate
process per mount: pyfuse3 allows one session per process. Unmount it with
``fusermount3 -u -z MOUNTPOINT`` (the process then ends).
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import sys
import time

import pyfuse3
import trio

DATA = bytes((i * 7 + i // 251) % 256 for i in range(256 * 1024))
SMALL = b"small file on slowfs\n"
HOLD_MAX = 60.0
ROOT, DATA_INO, SMALL_INO, DIR_INO, A_INO, B_INO = pyfuse3.ROOT_INODE, 2, 3, 4, 5, 6


class SlowFS(pyfuse3.Operations):
    def __init__(self, gates: str):
        super().__init__()
        self.gates = gates
        self.files = {DATA_INO: bytearray(DATA), SMALL_INO: bytearray(SMALL),
                      A_INO: bytearray(b"a\n"), B_INO: bytearray(b"b\n")}
        self.children = {ROOT: {b"data": DATA_INO, b"small": SMALL_INO, b"dir": DIR_INO},
                         DIR_INO: {b"a": A_INO, b"b": B_INO}}

    async def _gate(self, op: str) -> None:
        with open(os.path.join(self.gates, f"started-{op}"), "w"):
            pass
        hold = os.path.join(self.gates, f"hold-{op}")
        deadline = time.monotonic() + HOLD_MAX
        while os.path.exists(hold) and time.monotonic() < deadline:
            await trio.sleep(0.02)

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        if ino in self.children:
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFDIR | 0o755, 2, 0
        else:
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | 0o666, 1, len(self.files[ino])
        a.st_uid = a.st_gid = 0
        a.st_blksize = 4096
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = 1_700_000_000 * 10**9
        return a

    async def lookup(self, parent, name, ctx=None):
        ino = self.children.get(parent, {}).get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(ino)

    async def getattr(self, inode, ctx=None):
        return self._attr(inode)

    async def setattr(self, inode, attr, fields, fh, ctx):
        if fields.update_size and inode in self.files:
            buf = self.files[inode]
            del buf[attr.st_size:]
            buf.extend(bytes(attr.st_size - len(buf)))
        return self._attr(inode)

    async def opendir(self, inode, ctx):
        if inode not in self.children:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh, start_id, token):
        if fh == DIR_INO:
            await self._gate("readdir")
        entries = sorted(self.children[fh].items())
        for i in range(start_id, len(entries)):
            name, ino = entries[i]
            if not pyfuse3.readdir_reply(token, name, self._attr(ino), i + 1):
                break

    async def releasedir(self, fh):
        pass

    async def fsyncdir(self, fh, datasync):
        pass

    async def open(self, inode, flags, ctx):
        if inode not in self.files:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=inode, direct_io=True)

    async def read(self, fh, off, size):
        await self._gate("read")
        return bytes(self.files[fh][off:off + size])

    async def write(self, fh, off, buf):
        await self._gate("write")
        data = self.files[fh]
        if off > len(data):
            data.extend(bytes(off - len(data)))
        data[off:off + len(buf)] = buf
        return len(buf)

    async def fsync(self, fh, datasync):
        await self._gate("fsync")

    async def flush(self, fh):
        pass

    async def release(self, fh):
        pass


def main() -> None:
    mountpoint, gates = sys.argv[1], sys.argv[2]
    pyfuse3.init(SlowFS(gates), mountpoint, {"fsname=slowfs", "allow_other"})
    with open(os.path.join(gates, "ready"), "w"):
        pass
    try:
        # Several worker tasks: a held request must not hold up the others.
        trio.run(functools.partial(pyfuse3.main, min_tasks=4, max_tasks=64))
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    main()
