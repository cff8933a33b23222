"""The checkpoint image directory and its manifest.

``pod checkpoint NAME DIR`` fills DIR with one subdirectory per process tree
CRIU dumped (``tree-1/``, ``tree-2/``, ...: CRIU's ``*.img`` files and its
``dump.log``) and files of our own (``policy.toml``, ``pod.json``), and last
writes ``DIR/manifest.json``::

    {"format": 1,
     "created": "2026-12-01T21:36:20Z",
     "meta": {...},                     # what the caller passes, JSON as is
     "files": {"policy.toml": {"sha256": "<64 hex>", "size": 812}, ...}}

``files`` lists every regular file under DIR but the manifest itself, by
relative POSIX path. An image holds regular files and the directories that
lead to them, nothing else: no symbolic link, no device, fifo or socket, no
empty directory.

Why: ``pod restore DIR`` feeds the image to CRIU running as host root. An
image that is incomplete (a copy cut short), corrupted, edited, or written by
another version of Pea-Pod must be refused with one clear line before
anything starts, not half-restored. read_manifest() is that refusal: it
checks the manifest's format and every field, then that the tree holds
exactly the listed files with their sizes and sha256, and raises ImageError
for the first problem found.

How the checks resist a crafted image:

- every path of the manifest must be a plain relative path (no leading "/",
  no "", "." or ".." component), and every file is opened by a walk of
  O_NOFOLLOW opens from a descriptor of DIR, one component at a time: a
  manifest listing "../../etc/shadow", or a tree with ``tree-1 -> /etc`` or
  ``pages-1.img -> /etc/shadow``, makes us neither hash nor follow anything
  outside DIR. A symbolic link is refused even when it points to a file with
  the listed content: CRIU would follow it at restore, and what it points to
  may change after we verified it.
- opens use O_NONBLOCK and are checked with fstat, so a fifo in place of a
  file is refused instead of blocking the restore forever.
- the manifest is parsed strictly (no duplicate keys, no NaN, no unknown
  fields, ints that are ints), so what we verify is what the reader means.

What the manifest does not do: it is not signed. It detects corruption,
truncation and a file changed without its manifest entry, not someone who
can write DIR and rewrites manifest.json too; and a file changed after
read_manifest() returned is not detected. The restore must therefore run
on a directory that only root can write (or on a copy it made).

write_manifest() replaces manifest.json atomically (temp file, fsync,
rename, fsync of the directory), so a crash leaves the old manifest or the
new one, never a half one; it also fsyncs every file and directory it
lists, so a manifest that survived a crash describes data that did too.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import time
from pathlib import Path

FORMAT = 1                       # manifest format version, bumped on any incompatible change
MANIFEST = "manifest.json"
_TMP = MANIFEST + ".tmp"

_CHUNK = 1 << 20                 # hashing reads; images run to tens of MB
_MAX_MANIFEST = 16 << 20         # a manifest of many thousand files stays far below
_CREATED = "%Y-%m-%dT%H:%M:%SZ"
_CREATED_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", re.ASCII)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FIELDS = {"format", "created", "meta", "files"}
_ENTRY_FIELDS = {"sha256", "size"}

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a fifo planted in place of a file must not hang.
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class ImageError(Exception):
    """An image directory that cannot be written or must not be restored.
    str() is one line naming the file, meant for the user."""


def _show(path: str) -> str:
    # Names come from the image: a newline or escape sequence in one must
    # not break the one-line message or the terminal.
    return path if path.isprintable() else ascii(path)


def _quote(path: str) -> str:
    """A path as the manifest spells it (JSON string syntax, one line)."""
    return json.dumps(path)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def _not_allowed(shown: str, mode: int) -> ImageError:
    return ImageError(f"{shown}: {_kind(mode)} (an image holds only regular files and directories)")


def _json_kind(value) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "null"


class _Where:
    """Formats file names of one image for messages: DIR, DIR/rel."""

    def __init__(self, directory: Path):
        self.dir = str(directory)

    def __call__(self, rel: str = "") -> str:
        return _show(f"{self.dir}/{rel}" if rel else self.dir)


def _open_root(directory: Path, where: _Where) -> int:
    # DIR itself is the path the user named and is followed like any path
    # they type; everything below it is reached from this one descriptor.
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ImageError(f"{where()}: no such directory") from None
    except NotADirectoryError:
        raise ImageError(f"{where()}: not a directory") from None
    except OSError as e:
        raise ImageError(f"{where()}: cannot open ({e.strerror})") from None


def _open_below(root_fd: int, rel: str, where: _Where, final_flags: int,
                missing: str = "listed in the manifest but missing") -> int:
    """A descriptor of ``rel`` below root_fd, every component opened with
    O_NOFOLLOW: the scan refuses links, this refuses the ones planted after
    the scan."""
    parts = rel.split("/")
    fd = root_fd
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                nfd = os.open(part, final_flags if last else _DIR, dir_fd=fd)
            except OSError as e:
                shown = where("/".join(parts[:i + 1]))
                if e.errno == errno.ENOENT:
                    raise ImageError(f"{where(rel)}: {missing}") from None
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    # A link gives ELOOP, or ENOTDIR with O_DIRECTORY: name
                    # what the component is.
                    try:
                        mode = os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
                    except OSError:
                        mode = stat.S_IFLNK if e.errno == errno.ELOOP else stat.S_IFREG
                    if stat.S_ISREG(mode):
                        raise ImageError(f"{shown}: not a directory") from None
                    raise _not_allowed(shown, mode) from None
                raise ImageError(f"{shown}: cannot open ({e.strerror})") from None
            if fd != root_fd:
                os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        if fd != root_fd:
            os.close(fd)
        raise


def _scan(root_fd: int, where: _Where, skip: set[str]) -> tuple[dict[str, int], list[str]]:
    """Every regular file below root_fd (relpath -> size) and every
    directory (relpaths), in sorted order, top-level names in ``skip``
    left out. Anything else (a symbolic link, even to a directory, a
    fifo, a device, a socket) raises ImageError."""
    files: dict[str, int] = {}
    dirs: list[str] = []
    todo = [""]
    while todo:
        rel = todo.pop()
        fd = _open_below(root_fd, rel, where, _DIR) if rel else root_fd
        try:
            # scandir dups fd; entries are typed by lstat, never following.
            with os.scandir(fd) as it:
                entries = sorted(it, key=lambda e: e.name)
            subdirs = []
            for entry in entries:
                name = f"{rel}/{entry.name}" if rel else entry.name
                if not rel and entry.name in skip:
                    continue
                st = entry.stat(follow_symlinks=False)
                mode = st.st_mode
                if stat.S_ISREG(mode):
                    files[name] = st.st_size
                elif stat.S_ISDIR(mode):
                    dirs.append(name)
                    subdirs.append(name)
                else:
                    raise _not_allowed(where(name), mode)
        except OSError as e:
            raise ImageError(f"{where(rel)}: cannot list ({e.strerror})") from None
        finally:
            if fd != root_fd:
                os.close(fd)
        todo.extend(reversed(subdirs))          # depth first, in sorted order
    return files, dirs


def _ancestors(paths) -> set[str]:
    """Every directory that leads to one of ``paths``."""
    out = set()
    for p in paths:
        parts = p.split("/")
        out.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return out


def _hash(fd: int, shown: str) -> tuple[str, int]:
    """sha256 and length of what fd reads, in chunks."""
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    n = 0
    try:
        while True:
            got = os.readv(fd, [buf])
            if not got:
                return h.hexdigest(), n
            h.update(view[:got])
            n += got
    except OSError as e:
        raise ImageError(f"{shown}: cannot read ({e.strerror})") from None


def _open_file(root_fd: int, rel: str, where: _Where, **kw) -> tuple[int, int]:
    """An open regular file below root_fd, and its size."""
    fd = _open_below(root_fd, rel, where, _FILE, **kw)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_allowed(where(rel), st.st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def _sync(fd: int, shown: str) -> None:
    try:
        os.fsync(fd)
    except OSError as e:
        raise ImageError(f"{shown}: cannot sync to disk ({e.strerror})") from None


def write_manifest(directory: Path, meta: dict) -> dict:
    """Hash every regular file under ``directory`` (recursively, relative
    POSIX paths, sorted, the manifest itself left out), write manifest.json
    atomically and return the manifest, as read_manifest() will return it:

        {"format": FORMAT, "created": ISO-8601 UTC, "meta": meta,
         "files": {relpath: {"sha256": hex, "size": n}}}

    Raises ImageError for what read_manifest() would refuse (a symbolic
    link, a fifo, an empty directory...) or an I/O error, naming the file;
    TypeError (ValueError for a NaN) if meta is not a dict JSON can hold,
    before anything is read or written."""
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, not {type(meta).__name__}")
    json.dumps(meta, allow_nan=False)          # fail before hashing anything
    where = _Where(directory)
    root = _open_root(directory, where)
    try:
        # A temp file left by a crashed write is replaced below, not listed.
        found, dirs = _scan(root, where, {MANIFEST, _TMP})
        needed = _ancestors(found)
        for d in dirs:
            if d not in needed:
                raise ImageError(f"{where(d)}: an empty directory (an image holds only files "
                                 "and the directories that lead to them)")
        gone = "removed while the manifest was written"
        files = {}
        for rel in sorted(found):
            fd, _ = _open_file(root, rel, where, missing=gone)
            try:
                digest, size = _hash(fd, where(rel))
                _sync(fd, where(rel))          # the data the manifest vouches for is on disk
            finally:
                os.close(fd)
            files[rel] = {"sha256": digest, "size": size}
        for d in dirs:
            fd = _open_below(root, d, where, _DIR, missing=gone)
            try:
                _sync(fd, where(d))            # and so are the names in tree-N/
            finally:
                os.close(fd)
        manifest = {"format": FORMAT, "created": time.strftime(_CREATED, time.gmtime()),
                    "meta": meta, "files": files}
        data = (json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()
        try:
            # 0600: meta may hold what the daemon knew of the pod.
            fd = os.open(_TMP, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=root)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(_TMP, MANIFEST, src_dir_fd=root, dst_dir_fd=root)
            os.fsync(root)                     # the rename itself survives a crash
        except OSError as e:
            try:
                os.unlink(_TMP, dir_fd=root)
            except OSError:
                pass
            raise ImageError(f"{where(MANIFEST)}: cannot write ({e.strerror})") from None
    finally:
        os.close(root)
    return json.loads(data)


class _Bad(Exception):
    """A JSON-level refusal inside the parser hooks."""


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _Bad(f"key {_quote(k)} appears twice")
        out[k] = v
    return out


def _no_constant(name):
    raise _Bad(f"not valid JSON ({name})")


def _parse(data: bytes, shown: str):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ImageError(f"{shown}: not valid JSON (not UTF-8)") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise ImageError(f"{shown}: not valid JSON (line {e.lineno})") from None
    except _Bad as e:
        raise ImageError(f"{shown}: {e}") from None
    except RecursionError:
        raise ImageError(f"{shown}: not valid JSON (nested too deeply)") from None


def _path_problem(rel: str) -> str | None:
    """Why ``rel`` is not a plain relative path inside the image, or None."""
    if rel == "":
        return "an empty path"
    if "\0" in rel:
        return "a path with a NUL character"
    if rel.startswith("/"):
        return "an absolute path (paths are relative to the image directory)"
    for part in rel.split("/"):
        if part == "":
            return "a path with an empty component"
        if part in (".", ".."):
            return f'a path with a "{part}" component'
    if rel == MANIFEST:
        return "the manifest itself"
    return None


def _check_fields(m, shown: str) -> dict[str, tuple[str, int]]:
    """The files of manifest ``m`` (relpath -> (sha256, size)) once every
    field is checked."""
    if not isinstance(m, dict):
        raise ImageError(f"{shown}: holds {_json_kind(m)}, a manifest is a JSON object")
    # format first: a manifest of another format may differ in anything else.
    if "format" not in m:
        raise ImageError(f'{shown}: no "format" field')
    fmt = m["format"]
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise ImageError(f'{shown}: "format" must be an integer, not {_json_kind(fmt)}')
    if fmt != FORMAT:
        raise ImageError(f"{shown}: format {fmt}, this Pea-Pod reads format {FORMAT}")
    for key in sorted(_FIELDS):
        if key not in m:
            raise ImageError(f"{shown}: no {_quote(key)} field")
    for key in sorted(m):
        if key not in _FIELDS:
            raise ImageError(f"{shown}: unknown field {_quote(key)}")
    created = m["created"]
    if not isinstance(created, str):
        raise ImageError(f'{shown}: "created" must be a string, not {_json_kind(created)}')
    try:
        if not _CREATED_RE.fullmatch(created):
            raise ValueError(created)
        time.strptime(created, _CREATED)
    except ValueError:
        raise ImageError(f'{shown}: "created" must be a UTC time '
                         'like 2026-12-01T21:36:20Z') from None
    if not isinstance(m["meta"], dict):
        raise ImageError(f'{shown}: "meta" must be an object, not {_json_kind(m["meta"])}')
    files = m["files"]
    if not isinstance(files, dict):
        raise ImageError(f'{shown}: "files" must be an object, not {_json_kind(files)}')
    out = {}
    for rel in sorted(files):
        problem = _path_problem(rel)
        if problem:
            raise ImageError(f"{shown}: lists {_quote(rel)}, {problem}")
        entry = files[rel]
        if not isinstance(entry, dict):
            raise ImageError(f"{shown}: entry {_quote(rel)} must be an object, "
                             f"not {_json_kind(entry)}")
        for key in sorted(_ENTRY_FIELDS):
            if key not in entry:
                raise ImageError(f"{shown}: entry {_quote(rel)} has no {_quote(key)} field")
        for key in sorted(entry):
            if key not in _ENTRY_FIELDS:
                raise ImageError(f"{shown}: entry {_quote(rel)} has an unknown field {_quote(key)}")
        digest, size = entry["sha256"], entry["size"]
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise ImageError(f'{shown}: "sha256" of {_quote(rel)} must be 64 lower-case hex digits')
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ImageError(f'{shown}: "size" of {_quote(rel)} must be a non-negative integer')
        out[rel] = (digest, size)
    return out


def _read_manifest_file(root_fd: int, where: _Where) -> bytes:
    try:
        fd = os.open(MANIFEST, _FILE, dir_fd=root_fd)
    except FileNotFoundError:
        raise ImageError(f"{where()}: not an image directory (no {MANIFEST})") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _not_allowed(where(MANIFEST), stat.S_IFLNK) from None
        raise ImageError(f"{where(MANIFEST)}: cannot open ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_allowed(where(MANIFEST), st.st_mode)
        if st.st_size > _MAX_MANIFEST:
            raise ImageError(f"{where(MANIFEST)}: {st.st_size} bytes, too large for a manifest")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > _MAX_MANIFEST:          # it grew while we read
                raise ImageError(f"{where(MANIFEST)}: too large for a manifest")
            chunks.append(chunk)
    except OSError as e:
        raise ImageError(f"{where(MANIFEST)}: cannot read ({e.strerror})") from None
    finally:
        os.close(fd)


def read_manifest(directory: Path) -> dict:
    """Verify the image in ``directory`` and return its manifest.

    In order, the first problem raising ImageError: the directory exists and
    is one; manifest.json is a regular file holding a JSON object of format
    FORMAT with every field of the right type and every path plain and
    relative; the tree holds no symbolic link, fifo, device or socket
    (directories included), no file or directory the manifest does not
    list, every listed file with its listed size (all sizes are checked
    before any hashing: the cheap mismatch first); then every listed file
    has its listed sha256."""
    where = _Where(directory)
    root = _open_root(directory, where)
    try:
        data = _read_manifest_file(root, where)
        manifest = _parse(data, where(MANIFEST))
        listed = _check_fields(manifest, where(MANIFEST))

        found, dirs = _scan(root, where, {MANIFEST})
        needed = _ancestors(listed)
        for d in dirs:
            if d in listed:
                raise ImageError(f"{where(d)}: a directory, the manifest lists a file")
            if d not in needed:
                raise ImageError(f"{where(d)}: not listed in the manifest")
        for rel in sorted(set(listed) | set(found)):
            if rel not in found:
                raise ImageError(f"{where(rel)}: listed in the manifest but missing")
            if rel not in listed:
                raise ImageError(f"{where(rel)}: not listed in the manifest")
            want = listed[rel][1]
            if found[rel] != want:
                raise ImageError(f"{where(rel)}: {found[rel]} bytes, the manifest says {want} "
                                 "(truncated or changed after the checkpoint)")

        for rel in sorted(listed):
            want_hash, want_size = listed[rel]
            # Opened again, link-free, and sized again: the tree may have
            # changed since the scan.
            fd, size = _open_file(root, rel, where)
            try:
                if size == want_size:
                    digest, size = _hash(fd, where(rel))
            finally:
                os.close(fd)
            if size != want_size:
                raise ImageError(f"{where(rel)}: {size} bytes, the manifest says {want_size} "
                                 "(truncated or changed after the checkpoint)")
            if digest != want_hash:
                raise ImageError(f"{where(rel)}: sha256 mismatch "
                                 "(the image was changed after the checkpoint)")
    finally:
        os.close(root)
    return manifest
