"""PeaFS: the pyfuse3 operations, a pea-checking passthrough to the staging tree.

Design (see docs/ARCHITECTURE.md, "## peafs/"):
- Every object is reached through the inode table's O_PATH handles with
  *at() calls or a re-open of /proc/self/fd/N; never through a path string
  (inodes.py explains why).
- Every request is checked against the caller's pea before it touches
  anything. This module is an adapter: it gathers the facts (the object's
  pod paths from the inode table, flags, types), asks the pure core
  (decide.py) and has the verdict applied by enforce.py (the caller's pea
  from /proc, audit records, FUSEError); on-disk ids are translated in
  ids.py only.
- Handlers are synchronous under an async shim: each runs to completion in
  the trio thread, so the table is never seen half-updated and a pea check
  and the action it guards cannot interleave with another request. The
  exceptions are the calls that can wait on a disk or on another file system
  (fsync, reads that would wait, large writes, large or foreign directory
  listings, the hard-link state's rewrite): their handlers do all their
  checks and bookkeeping first, then await the call in a worker thread on a
  descriptor of their own, so that one pea's fsync never makes another pea's
  request wait (several FUSE worker tasks: session.py). FSYNC itself is
  answered before it reaches Python, by C threads (fuse_fsync.c); the
  handler below is the same call for a session without them.
- Kernel caches are shared by all callers, so we give them only answers that
  are the same for everyone: names and attributes of ordinary files and
  directories (long timeouts: the pea check lives in open/create/unlink/...,
  never in lookup) and file contents (keep_cache). FIFOs and sockets are the
  exception: the kernel opens and connects them without asking us, so their
  attributes are per pea (a mode that fails the kernel's own check) with an
  attribute timeout of 0; their names are kept like any other.
"""

from __future__ import annotations

import errno
import functools
import inspect
import os
import stat
import sys
import traceback

import pyfuse3
import trio

from . import decide, readloop, syscalls
from .decide import FMODE_EXEC, path_str
from .budget import OpenBudget
from .inodes import DEFAULT_FD_CACHE, OPEN_PATH, Inode, InodeTable, LookupCountError
from .keptfds import KeptReaders, shareable

ERR = pyfuse3.FUSEError
CACHE_TIMEOUT = 300.0      # entry/attr timeout for ordinary objects (seconds)
# How long the kernel may remember that a name does not exist. Every exec
# asks for names that are absent (/etc/ld.so.preload, the loader's
# glibc-hwcaps/, tls/ and x86_64/ subdirectories): some twenty lookups a
# dynamic exec when each absence reaches us. An absence is the same for
# every caller (existence is "seeing"); creates through the mount replace
# the negative entry at once, and only a name made in the staging directory
# from outside the mount stays unseen in the pod, for this long at most.
NEGATIVE_TIMEOUT = 1.0
# Writes of this size or more, and any write to a file on another file
# system than the staging root's (a network or FUSE mount inside the tree),
# go to a worker thread: on the loop they could wait for the disk (dirty
# page throttling) with every other pea's requests behind them. Smaller
# local writes land in the page cache; a thread hop costs ~80 us, more than
# they do. (Buffered writes cannot be asked not to wait: RWF_NOWAIT is
# EOPNOTSUPP for them on ext4.)
LARGE_IO = 32 * 1024
# A directory listing is read in a worker thread when the directory is this
# large (ext4: more than four blocks of entries, tmpfs: ~800 names) or on
# another file system than the staging root's.
LARGE_DIR = 16 * 1024


def no_setid(mode: int, is_dir: bool = False) -> int:
    """``mode`` without the bits that would give privilege on the host.

    The daemon writes as host root, so a set-uid (or set-gid) file made by
    a pod would be owned by a real id on disk and run with it for any host
    user who reaches the staging directory. They are cleared, silently (as
    the kernel clears them on a chown or a write): the pod then sees, and
    the disk holds, the mode without them. A directory keeps S_ISGID, which
    only makes new entries inherit its group."""
    return mode & ~(stat.S_ISUID | (0 if is_dir else stat.S_ISGID))


def uncached(flags: int, mode: int) -> bool:
    """Whether an open with ``flags`` of a file with ``mode`` is answered
    FOPEN_DIRECT_IO: opens for writing only, of files without set-id bits.

    Why: the kernel asks GETXATTR security.capability before every write
    through the page cache (file_remove_privs; FUSE never marks an inode
    S_NOSEC), one more round trip through the daemon's request thread per
    write: ~4.5 of the ~61 requests per message the mail pod accepts, most
    for Postfix's log. A direct write goes to us without it. Only
    write-only opens: a write-only descriptor cannot be read or mapped, so
    nothing of the page cache is lost to it, and the kernel drops the
    written range from the cache of the file's other opens
    (tests/peafs/test_write_only_opens.py).

    Why not set-id files: a pod process's cached write makes the kernel
    clear S_ISUID/S_ISGID (a SETATTR: no pod process has CAP_FSETID on the
    host); a direct write only carries FUSE_WRITE_KILL_SUIDGID, which
    pyfuse3 does not pass on, and the daemon writes as host root, which
    keeps the bits. A set-id file the pod rewrote would stay set-id on disk
    (no_setid: why none may exist). The pod cannot add the bits later
    (no_setid on chmod)."""
    return (flags & os.O_ACCMODE) == os.O_WRONLY and not mode & (stat.S_ISUID | stat.S_ISGID)


def _fuse_error(e: Exception) -> pyfuse3.FUSEError:
    if isinstance(e, OSError):
        return ERR(e.errno or errno.EIO)
    traceback.print_exc(file=sys.stderr)
    return ERR(errno.EIO)


def handler(fn):
    """Run a handler; OSError -> its errno, a bug -> EIO (the daemon stays
    up: one bad request must not unmount the pod)."""
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def waiting(self, *args):
            try:
                return await fn(self, *args)
            except ERR:
                raise
            except Exception as e:
                raise _fuse_error(e) from None
        return waiting

    @functools.wraps(fn)
    async def wrapper(self, *args):
        try:
            return fn(self, *args)
        except ERR:
            raise
        except Exception as e:
            raise _fuse_error(e) from None
    return wrapper


async def off_loop(fn, fd: int, *args):
    """``fn(own, *args)`` in a worker thread, on ``own``, a duplicate of
    ``fd``: a release that closes ``fd`` meanwhile (the caller killed
    mid-call) cannot make the thread act on whatever reuses its number."""
    own = os.dup(fd)
    readloop.hand_over()     # another task reads the requests meanwhile
    try:
        return await trio.to_thread.run_sync(fn, own, *args)
    finally:
        os.close(own)


class DirHandle:
    __slots__ = ("ino", "fd", "names", "pea")

    def __init__(self, ino: Inode, fd: int, pea):
        self.ino = ino
        self.fd = fd
        self.names: list[str] | None = None
        self.pea = pea


class PeaFS(pyfuse3.Operations):
    # "." and ".." lookups are only for NFS export; without them the kernel
    # resolves ".." in its own dcache, and at the pod root ".." is the root.
    supports_dot_lookup = False
    # No writeback cache: the kernel would turn write-only opens into
    # read-write ones to fill its pages, and answer O_APPEND from a size it
    # caches (removed as an untested mode, issue #13).
    enable_writeback_cache = False

    def __init__(self, root_fd: int, policy, ids, enforcer, links, *,
                 budget: OpenBudget | None = None, fd_cache: int = DEFAULT_FD_CACHE):
        super().__init__()
        self.table = InodeTable(root_fd, fd_cache)
        self.root_dev = self.table.root.key[0]
        self.policy = policy
        self.ids = ids
        self.enf = enforcer
        self.links = links
        self.budget = budget if budget is not None else OpenBudget(1 << 30, policy.peas)
        self.dirs: dict[int, DirHandle] = {}
        # Open files: fh (our descriptor) -> (pea charged, whether the file
        # is on the staging root's own file system).
        self.open_fds: dict[int, tuple[str, bool]] = {}
        # Plain read-only opens of local regular files share one kept
        # description per node, each open a dup of it (keptfds.py).
        self.readers = KeptReaders()
        self.table.take_kept = self.readers.take
        self._next_dir = 1

    # -- helpers -----------------------------------------------------------

    def _paths(self, ino: Inode):
        return self.table.paths(ino)

    def _child_paths(self, parent: Inode, name: str):
        return [p + (name,) for p in self.table.paths(parent)]

    def _attrs(self, ino: Inode, st: os.stat_result) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino.id
        a.generation = 0
        a.st_mode = st.st_mode
        a.st_nlink = st.st_nlink
        a.st_uid = self.ids.uid.to_host(st.st_uid)
        a.st_gid = self.ids.gid.to_host(st.st_gid)
        a.st_rdev = st.st_rdev
        a.st_size = st.st_size
        a.st_blksize = st.st_blksize
        a.st_blocks = st.st_blocks
        a.st_atime_ns = st.st_atime_ns
        a.st_mtime_ns = st.st_mtime_ns
        a.st_ctime_ns = st.st_ctime_ns
        if ino.is_special:
            # The name is the same for every caller (seeing), so the kernel
            # may keep it; the attributes are this caller's (decide.special),
            # so it must ask for them again at every open or connect: the
            # permission check with default_permissions refreshes attributes
            # whose timeout has passed, with the caller's credentials.
            # (Postfix connects to public/cleanup and opens public/qmgr for
            # every message: a LOOKUP each, before this.)
            a.entry_timeout = CACHE_TIMEOUT
            a.attr_timeout = 0
        else:
            a.entry_timeout = CACHE_TIMEOUT
            a.attr_timeout = CACHE_TIMEOUT
        return a

    def _answer(self, ino: Inode, st: os.stat_result, ctx, pea) -> pyfuse3.EntryAttributes:
        a = self._attrs(ino, st)
        if ino.is_special:
            self._guard_special(a, ino, ctx, pea)
        return a

    def _guard_special(self, a, ino: Inode, ctx, pea) -> None:
        """Per-pea attributes of a FIFO or socket (decide.special says why)."""
        verdict, answer = decide.special(pea, self._paths(ino), ino.fmt, a.st_mode, a.st_uid,
                                         a.st_gid, ctx.uid, ctx.gid,
                                         self.ids.uid.to_virtual(ctx.uid))
        self.enf.enforce(ctx, verdict)
        if answer is not None:
            a.st_mode, a.st_uid, a.st_gid = answer

    def _virtual_ids(self, ctx, parent_st: os.stat_result | None = None):
        vuid = self.ids.uid.to_virtual(ctx.uid)
        vgid = self.ids.gid.to_virtual(ctx.gid)
        if vuid is None or vgid is None:
            raise ERR(errno.EPERM)
        if parent_st is not None and parent_st.st_mode & stat.S_ISGID:
            vgid = -1           # keep the group the set-gid directory gave it
        return vuid, vgid

    def _adopt(self, parent: Inode, name: str, fd: int) -> tuple[Inode, os.stat_result]:
        st = os.fstat(fd)
        return self.table.remember(parent, name, fd, st), st

    def _new_object(self, parent: Inode, name: str, ctx, pea, make):
        """Create ``parent/name`` with ``make()`` and give it the caller's ids."""
        vuid, vgid = self._virtual_ids(ctx, os.fstat(parent.fd))
        make()
        fd = os.open(name, OPEN_PATH, dir_fd=parent.fd)
        try:
            syscalls.fchown_fd(fd, vuid, vgid)
        except OSError:
            os.close(fd)
            raise
        ino, st = self._adopt(parent, name, fd)
        return self._answer(ino, st, ctx, pea)

    def _entry_paths(self, parent: Inode, name: str):
        """Paths of an entry (decide.entry_paths: its name here and every
        other name its object is known by), its Inode if the table holds it,
        and what the stat of the name raised (None: it exists)."""
        pfd = parent.fd
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except OSError as e:
            return self._child_paths(parent, name), None, e
        ino = self.table.find_child(pfd, name, st)
        if ino is None:
            return self._child_paths(parent, name), None, None
        return decide.entry_paths(self._child_paths(parent, name), self._paths(ino)), ino, None

    @staticmethod
    def _name(name: bytes) -> str:
        if b"/" in name or name in (b"", b".", b".."):
            raise ERR(errno.EINVAL)
        return os.fsdecode(name)

    # -- lookups and attributes ---------------------------------------------

    @handler
    def lookup(self, parent_id, name, ctx):
        pea = self.enf.caller(ctx, "lookup")
        parent = self.table[parent_id]
        if name == b"." or (name == b".." and parent is self.table.root):
            parent.lookups += 1
            return self._answer(parent, os.fstat(parent.fd), ctx, pea)
        if name == b"..":
            raise ERR(errno.ENOENT)   # only NFS export asks; not supported
        sname = self._name(name)
        try:
            fd = os.open(sname, OPEN_PATH, dir_fd=parent.fd)
        except FileNotFoundError:
            absent = pyfuse3.EntryAttributes()   # st_ino 0: a negative entry
            absent.entry_timeout = NEGATIVE_TIMEOUT
            return absent
        ino, st = self._adopt(parent, sname, fd)
        return self._answer(ino, st, ctx, pea)

    async def forget(self, inode_list):
        # No handler wrapper: forget has no reply, and an exception here
        # would end pyfuse3's loop, i.e. unmount the pod.
        for node_id, count in inode_list:
            try:
                self.table.forget(node_id, count)
            except LookupCountError:
                # A count gone below zero is a bug worth a traceback in the
                # daemon's log, not the pod's death (InodeTable.forget says
                # why); the rest of the batch still counts.
                traceback.print_exc(file=sys.stderr)

    @handler
    def getattr(self, inode_id, ctx):
        ino = self.table[inode_id]
        # An outsider sees the mount root's attributes (decide.get_attributes);
        # the root is a directory, so the answer is the same for everyone.
        pea = self.enf.judge(ctx, decide.get_attributes, ino is self.table.root)
        return self._answer(ino, os.fstat(ino.fd), ctx, pea)

    @handler
    def setattr(self, inode_id, attr, fields, fh, ctx):
        ino = self.table[inode_id]
        pea = self.enf.judge(ctx, decide.set_attributes, self._paths(ino))
        is_link = ino.fmt == stat.S_IFLNK
        if fields.update_uid or fields.update_gid:
            vuid = vgid = -1
            if fields.update_uid:
                vuid = self.ids.uid.to_virtual(attr.st_uid)
                if vuid is None:
                    raise ERR(errno.EPERM)
            if fields.update_gid:
                vgid = self.ids.gid.to_virtual(attr.st_gid)
                if vgid is None:
                    raise ERR(errno.EPERM)
            syscalls.fchown_fd(ino.fd, vuid, vgid)
        if fields.update_mode:
            if is_link:
                raise ERR(errno.EOPNOTSUPP)
            os.chmod(ino.proc_path(),
                     no_setid(stat.S_IMODE(attr.st_mode), ino.fmt == stat.S_IFDIR))
        if fields.update_size:
            if fh is not None and fh in self.open_fds:
                os.ftruncate(fh, attr.st_size)
            else:
                os.truncate(ino.proc_path(), attr.st_size)
        if fields.update_atime or fields.update_mtime:
            st = os.fstat(ino.fd)
            atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
            mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
            if is_link:
                parent, name = next(iter(ino.links))
                os.utime(name, ns=(atime, mtime), dir_fd=parent.fd, follow_symlinks=False)
            else:
                os.utime(ino.proc_path(), ns=(atime, mtime))
        return self._answer(ino, os.fstat(ino.fd), ctx, pea)

    @handler
    def readlink(self, inode_id, ctx):
        self.enf.caller(ctx, "readlink")
        ino = self.table[inode_id]
        return os.readlink(b"", dir_fd=ino.fd)

    # -- creating names ------------------------------------------------------

    @handler
    def mknod(self, parent_id, name, mode, rdev, ctx):
        parent = self.table[parent_id]
        sname = self._name(name)
        pea = self.enf.judge(ctx, decide.mknod, self._paths(parent), mode)
        return self._new_object(parent, sname, ctx, pea,
                                lambda: os.mknod(sname, no_setid(mode), 0, dir_fd=parent.fd))

    @handler
    def mkdir(self, parent_id, name, mode, ctx):
        parent = self.table[parent_id]
        sname = self._name(name)
        pea = self.enf.judge(ctx, decide.make, "mkdir", self._paths(parent))
        return self._new_object(parent, sname, ctx, pea,
                                lambda: os.mkdir(sname, no_setid(mode, True), dir_fd=parent.fd))

    @handler
    def symlink(self, parent_id, name, target, ctx):
        parent = self.table[parent_id]
        sname = self._name(name)
        pea = self.enf.judge(ctx, decide.make, "symlink", self._paths(parent))
        return self._new_object(parent, sname, ctx, pea,
                                lambda: os.symlink(target, sname, dir_fd=parent.fd))

    @handler
    async def link(self, inode_id, new_parent_id, new_name, ctx):
        ino = self.table[inode_id]
        parent = self.table[new_parent_id]
        sname = self._name(new_name)
        old_paths = self._paths(ino)
        # w on the directory, and some letter of rwx on the original: a new
        # name is a new way to reach the object (decide.link).
        pea = self.enf.judge(ctx, decide.link, self._paths(parent), old_paths)
        new_path = path_str(self._child_paths(parent, sname)[0])
        # linkat through the handle's magic link: the object itself, never a
        # name a pod could have swapped meanwhile.
        os.link(ino.proc_path(), sname, dst_dir_fd=parent.fd, follow_symlinks=True)
        try:
            self.policy.add_link(new_path, path_str(old_paths[0]))
        except ValueError:
            # A name the rule engine cannot hold (it refuses e.g. trailing
            # blanks) must not stay a link without its inherited rule.
            os.unlink(sname, dir_fd=parent.fd)
            raise ERR(errno.EACCES) from None
        fd = os.open(sname, OPEN_PATH, dir_fd=parent.fd)
        ino2, st = self._adopt(parent, sname, fd)
        answer = self._answer(ino2, st, ctx, pea)
        await self.links.save_off_loop()
        return answer

    # -- removing and renaming names ----------------------------------------

    def _remove(self, op, parent_id, name, ctx, remove):
        parent = self.table[parent_id]
        sname = self._name(name)
        pea = self.enf.judge(ctx, decide.remove, op, self._paths(parent))
        # Only for a caller that may write the directory: the entry's stat.
        paths, ino, _ = self._entry_paths(parent, sname)
        self.enf.enforce(ctx, decide.remove_entry(pea, op, paths))
        remove(sname, parent.fd)
        self.table.unlinked(ino, parent, sname)
        return self._move_link_rules(path_str(paths[0]), None)

    @handler
    async def unlink(self, parent_id, name, ctx):
        if self._remove("unlink", parent_id, name, ctx, lambda n, fd: os.unlink(n, dir_fd=fd)):
            await self.links.save_off_loop()

    @handler
    async def rmdir(self, parent_id, name, ctx):
        if self._remove("rmdir", parent_id, name, ctx, lambda n, fd: os.rmdir(n, dir_fd=fd)):
            await self.links.save_off_loop()

    @handler
    async def rename(self, old_parent_id, old_name, new_parent_id, new_name, flags, ctx):
        if self._rename(old_parent_id, old_name, new_parent_id, new_name, flags, ctx):
            await self.links.save_off_loop()

    def _rename(self, old_parent_id, old_name, new_parent_id, new_name, flags, ctx) -> bool:
        op_ = self.table[old_parent_id]
        np_ = self.table[new_parent_id]
        oname = self._name(old_name)
        nname = self._name(new_name)
        pea = self.enf.judge(ctx, decide.rename_dirs, self._paths(op_), self._paths(np_))
        # Only for a caller that may write both directories: the entries.
        src_paths, src, _ = self._entry_paths(op_, oname)
        self.enf.enforce(ctx, decide.rename_entry(pea, src_paths))
        dst_paths, dst, missing = self._entry_paths(np_, nname)
        if missing is None:
            # Replacing (or exchanging with) an object is a write to it.
            self.enf.enforce(ctx, decide.rename_entry(pea, dst_paths))
        elif not isinstance(missing, FileNotFoundError):
            # We cannot tell whether the rename would replace an object,
            # which would need a check: fail with the stat's error.
            raise missing
        if flags:
            syscalls.renameat2(op_.fd, os.fsencode(oname), np_.fd, os.fsencode(nname), flags)
        else:
            os.rename(oname, nname, src_dir_fd=op_.fd, dst_dir_fd=np_.fd)
        exchange = bool(flags & pyfuse3.RENAME_EXCHANGE)
        if exchange:
            self.table.renamed(src, op_, oname, np_, nname)
            self.table.renamed(dst, np_, nname, op_, oname)
        else:
            if dst is not None and dst is not src:
                self.table.unlinked(dst, np_, nname)
            self.table.renamed(src, op_, oname, np_, nname)
        return self._move_link_rules(path_str(src_paths[0]), path_str(dst_paths[0]), exchange)

    def _move_link_rules(self, old: str, new: str | None, exchange: bool = False) -> bool:
        """Keep hard-link rules attached to their objects when names move.

        ``new`` None: ``old`` was removed. Otherwise ``old`` (and everything
        below it) now lives at ``new``; what was at ``new`` is gone, or, for
        an exchange, lives at ``old``. True if the rules changed (the caller
        then saves them, off the loop).
        """
        data = self.policy.links()
        if not data:
            return False

        def under(p, base):
            return p == base or p.startswith(base + "/")

        out, changed = {}, False
        for p, rule in data.items():
            if under(p, old):
                changed = True
                if new is not None:
                    out[new + p[len(old):]] = rule
            elif new is not None and under(p, new):
                changed = True
                if exchange:
                    out[old + p[len(new):]] = rule
            else:
                out[p] = rule
        if changed:
            self.policy.restore_links(out)
        return changed

    # -- files ----------------------------------------------------------------

    def _real_flags(self, flags: int) -> int:
        # O_NOFOLLOW was for the caller's path, which the kernel has already
        # resolved; on our re-open of /proc/self/fd/N (a magic link) it
        # would fail every such open with ELOOP. O_DIRECT is the kernel's
        # business on the FUSE side (it bypasses the mount's page cache and
        # sends the caller's reads and writes as they are); on our fd it
        # would demand aligned buffers that pread/pwrite here never have
        # (EINVAL: MariaDB's InnoDB opens its data files O_DIRECT).
        flags &= ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY | FMODE_EXEC | os.O_NOFOLLOW
                   | os.O_DIRECT)
        flags |= os.O_CLOEXEC
        return flags

    def _charge(self, ctx, pea, operation: str, paths) -> None:
        """Count one descriptor against ``pea``'s share (budget.py);
        ENFILE, logged, when the share is full."""
        if not self.budget.take(pea.name):
            self.enf.enforce(ctx, decide.over_share(pea.name, operation, paths,
                                                    self.budget.share))

    def _held_open(self, fd: int, pea, st_dev: int) -> int:
        self.open_fds[fd] = (pea.name, st_dev == self.root_dev)
        return fd

    def _is_local(self, fh: int) -> bool:
        """Whether open file ``fh`` is on the staging root's file system."""
        held = self.open_fds.get(fh)
        return held is not None and held[1]

    @handler
    def open(self, inode_id, flags, ctx):
        ino = self.table[inode_id]
        paths = self._paths(ino)
        if flags & FMODE_EXEC:
            pea = self.enf.exec_open(ctx, paths, ino.id)
            # Never refused in practice: the kernel execs regular files only.
            self.enf.enforce(ctx, decide.openable(ino.fmt))
        else:
            pea = self.enf.judge(ctx, decide.open_file, paths, flags, ino.fmt)
        self._charge(ctx, pea, "open", paths)
        real = self._real_flags(flags)
        try:
            if shareable(real) and ino.fmt == stat.S_IFREG and ino.key[0] == self.root_dev:
                fd = self.readers.open(ino.id, ino.proc_path())
            else:
                fd = os.open(ino.proc_path(), real)
        except BaseException:
            self.budget.give(pea.name)
            raise
        # The access mode first: only a write-only open pays the fstat.
        direct = (flags & os.O_ACCMODE) == os.O_WRONLY and uncached(flags, os.fstat(fd).st_mode)
        return pyfuse3.FileInfo(fh=self._held_open(fd, pea, ino.key[0]), keep_cache=True,
                                direct_io=direct)

    @handler
    def create(self, parent_id, name, mode, flags, ctx):
        parent = self.table[parent_id]
        sname = self._name(name)
        new_paths = self._child_paths(parent, sname)
        pea = self.enf.judge(ctx, decide.create, self._paths(parent), new_paths, flags)
        vuid, vgid = self._virtual_ids(ctx, os.fstat(parent.fd))
        real = self._real_flags(flags) | os.O_NOFOLLOW
        self._charge(ctx, pea, "create", new_paths)
        fd = None
        try:
            try:
                fd = os.open(sname, real | os.O_CREAT | os.O_EXCL, no_setid(mode),
                             dir_fd=parent.fd)
                created = True
            except FileExistsError:
                if flags & os.O_EXCL:
                    raise
                # Created meanwhile by someone else: an open, not a create.
                fd = os.open(sname, real, dir_fd=parent.fd)
                created = False
            if created:
                os.fchown(fd, vuid, vgid)
            # Follow the magic link (no O_NOFOLLOW): it names the new inode.
            pfd = os.open(f"/proc/self/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
        except BaseException:
            if fd is not None:
                os.close(fd)
            self.budget.give(pea.name)
            raise
        ino, st = self._adopt(parent, sname, pfd)
        self._held_open(fd, pea, st.st_dev)
        return (pyfuse3.FileInfo(fh=fd, keep_cache=True, direct_io=uncached(flags, st.st_mode)),
                self._answer(ino, st, ctx, pea))

    @handler
    async def read(self, fh, off, size):
        # A small read of a file on the staging root's file system stays on
        # the loop, even from the disk (a cold 4 KiB read costs less than
        # the ~80 us thread hop, and cold small-file reads are common). A
        # large one is served from the page cache on the loop when it can
        # be; one that would wait for the disk (EAGAIN), or whose file
        # system cannot say (EOPNOTSUPP: FUSE, NFS), and any read of a file
        # on another file system, goes to a worker thread.
        local = self._is_local(fh)
        if local and size < LARGE_IO:
            return os.pread(fh, size, off)
        if local:
            buf = bytearray(size)
            try:
                n = os.preadv(fh, [buf], off, os.RWF_NOWAIT)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EOPNOTSUPP):
                    raise
            else:
                # A short answer means end of file to the kernel (it may
                # shrink its idea of the size): give one only at the end.
                if n == size or off + n >= os.fstat(fh).st_size:
                    return memoryview(buf)[:n]
        return await off_loop(os.pread, fh, size, off)

    @handler
    async def write(self, fh, off, buf):
        if len(buf) < LARGE_IO and self._is_local(fh):
            return os.pwrite(fh, buf, off)
        return await off_loop(os.pwrite, fh, buf, off)

    async def flush(self, fh):
        # Nothing to do at close(2) (data goes straight to the staging file;
        # fsync is fsync). ENOSYS makes the kernel stop sending FLUSH at
        # all: one round trip less for every close.
        raise ERR(errno.ENOSYS)

    @handler
    def release(self, fh):
        held = self.open_fds.pop(fh, None)
        if held is not None:
            self.budget.give(held[0])
            os.close(fh)

    @handler
    async def fsync(self, fh, datasync):
        # Acknowledge only what the staging file system has on disk; the
        # wait for it is the worker thread's, not the other peas'.
        # fuse_fsync.c answers FSYNC in C threads before the request reaches
        # Python (the GIL made each wait 2 ms longer); this is the same
        # call for a session without it.
        await off_loop(os.fdatasync if datasync else os.fsync, fh)

    # -- directories ----------------------------------------------------------

    @handler
    def opendir(self, inode_id, ctx):
        ino = self.table[inode_id]
        paths = self._paths(ino)
        pea = self.enf.judge(ctx, decide.opendir, paths)
        self._charge(ctx, pea, "opendir", paths)
        try:
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=ino.fd)
        except BaseException:
            self.budget.give(pea.name)
            raise
        h = self._next_dir
        self._next_dir += 1
        self.dirs[h] = DirHandle(ino, fd, pea)
        return h

    @handler
    async def readdir(self, fh, start_id, token):
        h = self.dirs[fh]
        if start_id == 0 or h.names is None:
            st = os.fstat(h.fd)
            if st.st_size < LARGE_DIR and st.st_dev == self.root_dev:
                h.names = os.listdir(h.fd)
            else:
                h.names = await off_loop(os.listdir, h.fd)
            if self.dirs.get(fh) is not h:
                return      # released while the listing was read
        self._reply_entries(h, start_id, token)

    def _reply_entries(self, h: DirHandle, start_id: int, token) -> None:
        names = h.names
        # Offsets 0 and 1 are "." and ".."; the kernel takes no lookup
        # reference for them, and ".." of the pod root is the root itself.
        for i in range(start_id, 2):
            a = self._attrs(h.ino, os.fstat(h.fd))
            if i == 1 and h.ino is not self.table.root and h.ino.links:
                a.st_ino = next(iter(h.ino.links))[0].id
            if not pyfuse3.readdir_reply(token, b"." if i == 0 else b"..", a, i + 1):
                return
        for i in range(max(start_id, 2), len(names) + 2):
            name = names[i - 2]
            try:
                st = os.stat(name, dir_fd=h.fd, follow_symlinks=False)
                ino = self.table.held(h.fd, name, st)
                if ino is not None:
                    # Already held (the common case on a second listing):
                    # count the kernel's new reference, skip the open.
                    ino = self.table.remember_again(ino, h.ino, name)
                else:
                    fd = os.open(name, OPEN_PATH, dir_fd=h.fd)
                    ino, st = self._adopt(h.ino, name, fd)
            except FileNotFoundError:
                continue
            a = self._attrs(ino, st)
            if ino.is_special:
                # No caller context here: the refusing answer, which a
                # timeout of 0 replaces by the caller's own on next use.
                a.st_mode, a.st_uid, a.st_gid = decide.refusing_answer(a.st_mode)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), a, i + 1):
                self.table.forget(ino.id, 1)
                break

    @handler
    def releasedir(self, fh):
        h = self.dirs.pop(fh, None)
        if h is not None:
            self.budget.give(h.pea.name)
            os.close(h.fd)

    @handler
    async def fsyncdir(self, fh, datasync):
        await off_loop(os.fsync, self.dirs[fh].fd)

    @handler
    def statfs(self, ctx):
        # Free space of the staging file system: not refused to outsiders
        # (df walks every mount), it names no object of the pod.
        sv = os.statvfs(self.table.root.fd)
        d = pyfuse3.StatvfsData()
        for f in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                  "f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(d, f, getattr(sv, f))
        return d

    @handler
    def access(self, inode_id, mode, ctx):
        # Only asked without default_permissions; kept for completeness.
        ino = self.table[inode_id]
        pea = self.enf.caller(ctx, "access")
        return decide.access(pea, self._paths(ino), mode, ino.is_dir)

    # -- extended attributes --------------------------------------------------

    @handler
    def getxattr(self, inode_id, name, ctx):
        if name == b"security.capability":
            # Asked by the kernel before every write (to drop file
            # capabilities); on a nosuid mount they never apply, and a pod
            # cannot set them: answer at once, without a check or a syscall.
            # fuse_caches.c gives this answer before the request reaches
            # Python; this is the same rule for a session without it.
            raise ERR(errno.ENODATA)
        ino = self.table[inode_id]
        self.enf.judge(ctx, decide.getxattr, self._paths(ino), ino.fmt)
        return os.getxattr(ino.proc_path(), name)

    @handler
    def listxattr(self, inode_id, ctx):
        ino = self.table[inode_id]
        self.enf.caller(ctx, "listxattr")
        if ino.fmt == stat.S_IFLNK:
            return []
        return [os.fsencode(n) for n in os.listxattr(ino.proc_path())]

    def _xattr_write(self, op, inode_id, name, ctx) -> Inode:
        ino = self.table[inode_id]
        self.enf.judge(ctx, decide.xattr_write, op, self._paths(ino), name, ino.fmt)
        return ino

    @handler
    def setxattr(self, inode_id, name, value, ctx):
        ino = self._xattr_write("setxattr", inode_id, name, ctx)
        os.setxattr(ino.proc_path(), name, value)

    @handler
    def removexattr(self, inode_id, name, ctx):
        ino = self._xattr_write("removexattr", inode_id, name, ctx)
        os.removexattr(ino.proc_path(), name)
