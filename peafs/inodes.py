"""The inode table: every staging-tree object the kernel knows, by handle.

The daemon never joins a path string onto the staging path. Each object the
kernel has looked up is reached through a descriptor opened with O_PATH |
O_NOFOLLOW (an inode handle); every later operation is an *at() call
relative to such a descriptor, or a re-open of it through /proc/self/fd/N. A
pod that swaps a directory for a symlink, renames a parent, or plants ".."
tricks cannot redirect the daemon: the descriptor names one inode, whatever
happens to the names around it.

Descriptors are a bounded cache, not one per object. The kernel may hold
hundreds of thousands of our objects (a pea that creates 20 000 files keeps
them all in its dentry cache), and the daemon's RLIMIT_NOFILE is shared by
every pea: pinning one descriptor per object let one pea exhaust it for all.
So each Inode keeps its kernel file handle (name_to_handle_at) and at most
``fd_cache`` descriptors stay open, least recently used first out; an
evicted object is re-opened from its handle (open_by_handle_at) when next
used. A handle names one inode *and its generation*: once the object is gone
it opens nothing (ESTALE), never a newer file that reused the inode number.
Objects on a file system that cannot make handles keep their descriptor
pinned, as before.

Keys: an Inode is found by (st_dev, st_ino) (hard links share one entry, mount
points inside the staging tree are distinct devices) and by the FUSE node id
the kernel uses. A cached descriptor pins its inode, so a key that finds an
Inode with a descriptor finds the same object; one without a descriptor is
confirmed by its handle first (``_same``), since its inode number may have
been reused. Node ids are never reused for another object, so every reply
carries generation 0.

Pod paths: the rules are written in pod paths, so each Inode records the
names it is known by, as (parent Inode, name) links; its paths are computed
by walking up to the root (O(depth), as rule matching is). Renaming a
directory changes one link, and everything below follows. An object with
several known names (hard links that existed before the mount) has several
paths; the enforcer intersects what they grant. Link objects keep their
parents alive (a parent the kernel has forgotten stays as a name), and an
object looked up again finds its old entry through a weak map, so paths stay
exact after the kernel's cache evicts a directory.
"""

from __future__ import annotations

import errno
import os
import stat
import weakref
from collections import OrderedDict

import pyfuse3

from .closer import Closer
from .syscalls import handle_of, open_by_handle

ROOT_ID = pyfuse3.ROOT_INODE
OPEN_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
DEFAULT_FD_CACHE = 4096
MIN_FD_CACHE = 8      # above what one request touches at once (rename: 4)


class LookupCountError(RuntimeError):
    """The kernel forgot more references to a node than it was given
    (``InodeTable.forget`` says why this is an error, not an abort)."""


class Inode:
    __slots__ = ("id", "_fd", "key", "fmt", "lookups", "links", "handle", "mnt",
                 "alive", "table", "__weakref__")

    def __init__(self, table: "InodeTable", node_id: int, fd: int, key: tuple[int, int],
                 fmt: int, handle: bytes | None = None, mnt: int = -1):
        self.table = table
        self.id = node_id
        self._fd: int | None = fd
        self.key = key
        self.fmt = fmt                      # stat.S_IFMT of the object
        self.lookups = 0                    # the kernel's lookup count
        self.links: set[tuple[Inode, str]] = set()
        self.handle = handle                # None: descriptor pinned
        self.mnt = mnt                      # mount id the handle belongs to
        self.alive = True                   # False once the kernel forgot it

    @property
    def fd(self) -> int:
        """An O_PATH descriptor on the object (valid until the next request:
        the cache may close it then). OSError(ESTALE) if it is gone."""
        fd = self._fd
        if fd is None:
            return self.table.reopen(self)
        if self.handle is not None:
            self.table.used(self)
        return fd

    @property
    def is_dir(self) -> bool:
        return self.fmt == stat.S_IFDIR

    @property
    def is_special(self) -> bool:
        """FIFOs and sockets: guarded per pea at lookup time (see fs.py)."""
        return self.fmt in (stat.S_IFIFO, stat.S_IFSOCK)

    def proc_path(self) -> str:
        """Re-open path of the handle (the magic link names this inode)."""
        return f"/proc/self/fd/{self.fd}"

    def __repr__(self) -> str:
        return f"<Inode {self.id} key={self.key} lookups={self.lookups}>"


class InodeTable:
    def __init__(self, root_fd: int, fd_cache: int = DEFAULT_FD_CACHE):
        st = os.fstat(root_fd)
        self.root = Inode(self, ROOT_ID, root_fd, (st.st_dev, st.st_ino), stat.S_IFMT(st.st_mode))
        self.root.lookups = 1               # never forgotten, never evicted
        self._by_id: dict[int, Inode] = {ROOT_ID: self.root}
        self._by_key: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._by_key[self.root.key] = self.root
        self._next_id = ROOT_ID + 1
        self.fd_cache = max(MIN_FD_CACHE, fd_cache)
        self._cached: OrderedDict[Inode, None] = OrderedDict()   # LRU first
        # Called with a node id whenever its descriptor is closed (evicted,
        # forgotten): the other descriptor the daemon holds on that object,
        # or None (fs.py: the kept read descriptor), taken to be closed with
        # it, so that the daemon never pins an inode the cache let go.
        self.take_kept = lambda node_id: None
        # Closes them: at once, or off this thread when the close frees an
        # unlinked file (closer.py: why).
        self.closer = Closer()
        # open_by_handle_at wants a descriptor on the object's mount that is
        # not O_PATH: one directory per mount id, opened when first met.
        self._mount_fds: dict[int, int | None] = {}
        got = handle_of(root_fd)
        if got is not None:
            self._mount_fd(got[1], root_fd, got[0])

    def __getitem__(self, node_id: int) -> Inode:
        return self._by_id[node_id]

    def get(self, node_id: int) -> Inode | None:
        return self._by_id.get(node_id)

    def __len__(self) -> int:
        return len(self._by_id)

    # -- descriptors ---------------------------------------------------------

    def _mount_fd(self, mnt: int, dir_fd: int, handle: bytes) -> int | None:
        """The descriptor to open mount ``mnt``'s handles with, made from
        the directory ``dir_fd`` (whose handle is ``handle``) when first
        met; None if handles of that mount cannot be opened (a file system
        that makes handles it cannot decode): its objects stay pinned."""
        if mnt in self._mount_fds:
            return self._mount_fds[mnt]
        fd = os.open(f"/proc/self/fd/{dir_fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.close(open_by_handle(fd, handle, OPEN_PATH))
        except OSError:
            os.close(fd)
            fd = None
        self._mount_fds[mnt] = fd
        return fd

    def used(self, ino: Inode) -> None:
        self._cached.move_to_end(ino)

    def _cache(self, ino: Inode, fd: int) -> None:
        ino._fd = fd
        self._cached[ino] = None
        while len(self._cached) > self.fd_cache:
            old, _ = self._cached.popitem(last=False)
            self._close(old)

    def reopen(self, ino: Inode) -> int:
        """A descriptor for an object whose descriptor the cache closed."""
        mfd = self._mount_fds.get(ino.mnt)
        if ino.handle is None or mfd is None or not ino.alive:
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))
        fd = open_by_handle(mfd, ino.handle, OPEN_PATH)
        self._cache(ino, fd)
        return fd

    def _drop_fd(self, ino: Inode) -> None:
        if ino._fd is None:
            return
        if ino.handle is not None:
            del self._cached[ino]
        self._close(ino)

    def _close(self, ino: Inode) -> None:
        """Close ``ino``'s descriptor, and with it what take_kept holds on
        the same object (both through the closer: one of them may be the
        last reference of an unlinked file)."""
        fds, ino._fd = [ino._fd], None
        kept = self.take_kept(ino.id)
        if kept is not None:
            fds.append(kept)
        self.closer.close(fds)

    def _same(self, ino: Inode, dir_fd: int, name: str | bytes = b"") -> bool:
        """Whether ``ino`` is the object at ``dir_fd``/``name`` (or behind
        ``dir_fd`` itself), for an Inode found by its (st_dev, st_ino) key."""
        if ino._fd is not None:
            return True     # the descriptor pins the inode: its number is not reused
        if ino.handle is None:
            return False
        got = handle_of(dir_fd, name)
        return got is not None and got[0] == ino.handle

    # -- the kernel's references ---------------------------------------------

    def remember(self, parent: Inode, name: str, fd: int, st: os.stat_result) -> Inode:
        """Account one kernel lookup of ``parent/name``, opened as ``fd``.

        Takes ownership of ``fd`` (closed if the object is already held).
        """
        key = (st.st_dev, st.st_ino)
        if key == self.root.key:
            # The root reached by a name (a bind mount of the staging dir
            # inside itself): never let a second handle alias the root.
            os.close(fd)
            ino = self.root
        else:
            ino = None
            try:
                ino = self._by_key.get(key)
                if ino is not None and not self._same(ino, fd):
                    # Its inode number now belongs to another object: the old
                    # one is gone (operations on it get ESTALE).
                    del self._by_key[key]
                    ino = None
                if ino is None:
                    ino = self._new(fd, key, st)
                elif ino._fd is None:
                    # Evicted from the cache, or forgotten by the kernel and
                    # still named as a parent: the same object, held again.
                    if not ino.alive:
                        ino.alive = True
                        self._by_id[ino.id] = ino
                    ino.fmt = stat.S_IFMT(st.st_mode)
                    self._cache(ino, fd)
                else:
                    if not ino.alive:
                        ino.alive = True
                        self._by_id[ino.id] = ino
                    os.close(fd)
            except BaseException:
                if ino is None or ino._fd != fd:
                    os.close(fd)
                raise
            ino.links.add((parent, name))
        ino.lookups += 1
        return ino

    def _new(self, fd: int, key: tuple[int, int], st: os.stat_result) -> Inode:
        fmt = stat.S_IFMT(st.st_mode)
        got = handle_of(fd)
        handle, mnt = got if got is not None else (None, -1)
        if handle is not None and mnt not in self._mount_fds and fmt == stat.S_IFDIR:
            self._mount_fd(mnt, fd, handle)
        if handle is not None and self._mount_fds.get(mnt) is None:
            handle = None   # no way to open it again (see _mount_fd): pinned
        ino = Inode(self, self._next_id, None, key, fmt, handle, mnt)
        self._next_id += 1
        self._by_key[key] = ino
        self._by_id[ino.id] = ino
        if handle is None:
            ino._fd = fd            # pinned: never evicted
        else:
            self._cache(ino, fd)
        return ino

    def held(self, dir_fd: int, name: str, st: os.stat_result) -> Inode | None:
        """The live Inode of ``dir_fd``/``name`` (stat ``st``), if the table
        holds that very object (readdir: count a reference, skip the open)."""
        ino = self._by_key.get((st.st_dev, st.st_ino))
        if (ino is None or not ino.alive or ino.fmt != stat.S_IFMT(st.st_mode)
                or not self._same(ino, dir_fd, name)):
            return None
        return ino

    def remember_again(self, ino: Inode, parent: Inode, name: str) -> Inode:
        """Account one more kernel lookup of a held object found by key."""
        ino.links.add((parent, name))
        ino.lookups += 1
        return ino

    def forget(self, node_id: int, count: int) -> None:
        """The kernel dropped ``count`` of its references to ``node_id``.

        At zero the entry leaves the id map and closes its descriptor; it
        stays as a name while a child's link holds it (see ``paths``), and a
        later lookup of the same object revives it under the same id.

        Forgetting more than was counted raises LookupCountError, after the
        entry is dropped as the kernel wants it. The count was wrong, ours
        or the kernel's: libfuse's passthrough_hp aborts there, since in C
        the entry may already be freed and the next request use it after
        free. Here nothing is freed under a request (a node id is never
        reused for another object, and a request for a dropped id finds no
        entry and is answered EIO), so taking the whole pod down for it
        would trade a bookkeeping error for a denial of service; clamping it
        silently, as we did, hid it. The error is raised to the caller: the
        FUSE forget handler logs it with its traceback to the daemon's log
        (forget has no reply to carry it), and tests see it.
        """
        ino = self._by_id.get(node_id)
        if ino is None or ino is self.root:
            # Unknown: already dropped (by a forget that reached zero, which
            # raised below if it went under), or the table was closed.
            return
        ino.lookups -= count
        if ino.lookups <= 0:
            under = ino.lookups
            ino.lookups = 0
            del self._by_id[node_id]
            ino.alive = False
            self._drop_fd(ino)
            if under < 0:
                raise LookupCountError(
                    f"forget({node_id}, {count}) took the lookup count of {ino!r} to {under}: "
                    "the kernel forgot more references than it was given")

    # -- names -----------------------------------------------------------

    def find_child(self, dir_fd: int, name: str, st: os.stat_result) -> Inode | None:
        """The Inode of the object behind ``dir_fd``/``name``, if the table
        has it. ``st`` is the adapter's stat of that name (without following
        a symlink): fs.py makes it once, and also tells by it whether a
        rename replaces an entry."""
        ino = self._by_key.get((st.st_dev, st.st_ino))
        if ino is None or not self._same(ino, dir_fd, name):
            return None
        return ino

    @staticmethod
    def unlinked(ino: Inode | None, parent: Inode, name: str) -> None:
        # The last name is kept: an object unlinked while open (a temporary
        # file) is still judged by the path it had, never left without one.
        if ino is not None and len(ino.links) > 1:
            ino.links.discard((parent, name))

    @staticmethod
    def renamed(ino: Inode | None, old_parent: Inode, old_name: str,
                new_parent: Inode, new_name: str) -> None:
        if ino is not None:
            ino.links.discard((old_parent, old_name))
            ino.links.add((new_parent, new_name))

    def paths(self, ino: Inode, _depth: int = 0) -> list[tuple[str, ...]]:
        """Every pod path ``ino`` is known by, as component tuples ("/" = ()).

        An object unlinked while open keeps its last name (see ``unlinked``);
        an empty answer can only come from a bug and is refused by the
        enforcer (fail-safe).
        """
        if ino is self.root:
            return [()]
        if _depth > 4096:                   # a loop can only come from a bug
            return []
        out = []
        for parent, name in list(ino.links):
            for p in self.paths(parent, _depth + 1):
                out.append(p + (name,))
        return out

    def close_all(self) -> None:
        for ino in list(self._by_id.values()):
            if ino is not self.root:
                ino.alive = False
                self._drop_fd(ino)
        for fd in self._mount_fds.values():
            if fd is not None:
                os.close(fd)
        self._mount_fds = {}
        self._by_id = {ROOT_ID: self.root}
