"""The inode table: every staging-tree object the kernel knows, as a descriptor.

The daemon never joins a path string onto the staging path. Each object the
kernel has looked up is held open with O_PATH | O_NOFOLLOW (an inode handle);
every later operation is an *at() call relative to such a handle, or a
re-open of it through /proc/self/fd/N. A pod that swaps a directory for a
symlink, renames a parent, or plants ".." tricks cannot redirect the daemon:
the handle names one inode, whatever happens to the names around it. An open
O_PATH descriptor also pins the inode, so its (st_dev, st_ino) can not be
reused by a new file while the kernel still refers to it.

Keys: an Inode is found by (st_dev, st_ino) (hard links share one entry, mount
points inside the staging tree are distinct devices) and by the FUSE node id
the kernel uses. Node ids are never reused for another object, so every reply
carries generation 0.

Pod paths: the rules are written in pod paths, so each Inode records the
names it is known by, as (parent Inode, name) links; its paths are computed
by walking up to the root (O(depth), as rule matching is). Renaming a
directory changes one link, and everything below follows. An object with
several known names (hard links that existed before the mount) has several
paths; the enforcer intersects what they grant. Link objects keep their
parents alive (a parent the kernel has forgotten loses its descriptor but
stays as a name), and an object looked up again finds its old entry through
a weak map, so paths stay exact after the kernel's cache evicts a directory.
"""

from __future__ import annotations

import os
import stat
import weakref

import pyfuse3

ROOT_ID = pyfuse3.ROOT_INODE
OPEN_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class Inode:
    __slots__ = ("id", "fd", "key", "fmt", "lookups", "links", "__weakref__")

    def __init__(self, node_id: int, fd: int, key: tuple[int, int], fmt: int):
        self.id = node_id
        self.fd: int | None = fd
        self.key = key
        self.fmt = fmt                      # stat.S_IFMT of the object
        self.lookups = 0                    # the kernel's lookup count
        self.links: set[tuple[Inode, str]] = set()

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
    def __init__(self, root_fd: int):
        st = os.fstat(root_fd)
        self.root = Inode(ROOT_ID, root_fd, (st.st_dev, st.st_ino), stat.S_IFMT(st.st_mode))
        self.root.lookups = 1               # never forgotten
        self._by_id: dict[int, Inode] = {ROOT_ID: self.root}
        self._by_key: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._by_key[self.root.key] = self.root
        self._next_id = ROOT_ID + 1

    def __getitem__(self, node_id: int) -> Inode:
        return self._by_id[node_id]

    def get(self, node_id: int) -> Inode | None:
        return self._by_id.get(node_id)

    def by_key(self, key: tuple[int, int]) -> Inode | None:
        ino = self._by_key.get(key)
        return ino if ino is not None and ino.fd is not None else None

    def __len__(self) -> int:
        return len(self._by_id)

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
            ino = self._by_key.get(key)
            if ino is None:
                ino = Inode(self._next_id, fd, key, stat.S_IFMT(st.st_mode))
                self._next_id += 1
                self._by_key[key] = ino
                self._by_id[ino.id] = ino
            elif ino.fd is None:
                # Forgotten by the kernel, still named as a parent: revive it.
                ino.fd = fd
                ino.fmt = stat.S_IFMT(st.st_mode)
                self._by_id[ino.id] = ino
            else:
                os.close(fd)
            ino.links.add((parent, name))
        ino.lookups += 1
        return ino

    def remember_again(self, ino: Inode, parent: Inode, name: str) -> Inode:
        """Account one more kernel lookup of a held object found by key."""
        ino.links.add((parent, name))
        ino.lookups += 1
        return ino

    def forget(self, node_id: int, count: int) -> None:
        ino = self._by_id.get(node_id)
        if ino is None or ino is self.root:
            return
        ino.lookups -= count
        if ino.lookups <= 0:
            ino.lookups = 0
            del self._by_id[node_id]
            fd, ino.fd = ino.fd, None
            if fd is not None:
                os.close(fd)

    # -- names -----------------------------------------------------------

    def find_child(self, parent: Inode, name: str) -> Inode | None:
        """The held Inode behind ``parent/name``, if the table has it."""
        try:
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        except OSError:
            return None
        return self._by_key.get((st.st_dev, st.st_ino))

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
            if ino.fd is not None and ino is not self.root:
                os.close(ino.fd)
                ino.fd = None
        self._by_id = {ROOT_ID: self.root}
