"""The FUSE caches PeaFS asks for beyond pyfuse3's: symlinks and listings.

pyfuse3 3.5 negotiates its own list of capabilities with the kernel and
offers no way to add one, nor to set an opendir reply's flags. PeaFS needs
FUSE_CAP_CACHE_SYMLINKS (without it every path walk through a symlink is a
round trip to the daemon: a usr-merged pod root, /lib -> usr/lib, made 25
of the ~30 requests of each exec of a dynamic program) and kept directory
listings (FOPEN_CACHE_DIR: a Python CGI's imports listed the directories
of sys.path on every request). Why both are safe for PeaFS, and how they
are added, is in fuse_caches.c, a small library that `make deps` builds
into the venv (``<sys.prefix>/lib/peapod/``).

``preload()`` runs when the peafs package is imported, before pyfuse3 is:
the library is loaded with RTLD_GLOBAL so that pyfuse3's reference to
fuse_session_new binds to the wrapper (CPython loads extensions with
RTLD_NOW: the binding is made at pyfuse3's import). It links libfuse3,
which so joins the global scope after it, where the wrapper finds the real
function (dlvsym RTLD_NEXT). ``load()`` raises what ``preload()`` kept
quiet; session.py calls it before ``pyfuse3.init`` and ``check_wrapped()``
after, so a mount without the cache fails with the reason.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

LIBRARY = Path(sys.prefix) / "lib" / "peapod" / "fuse_caches.so"

_lib: ctypes.CDLL | None = None


class FuseCapsError(RuntimeError):
    """The library that adds PeaFS's FUSE capabilities is missing or unused."""


_error: str | None = None


def preload() -> None:
    """Load the library if it is there; remember why not otherwise."""
    global _lib, _error
    if _lib is not None:
        return
    if not LIBRARY.exists():
        _error = (f"{LIBRARY} is missing: PeaFS needs it to ask the kernel to cache "
                  "symlinks (FUSE_CAP_CACHE_SYMLINKS); build it with `make deps` in the checkout")
        return
    try:
        _lib = ctypes.CDLL(str(LIBRARY), mode=os.RTLD_NOW | os.RTLD_GLOBAL)
    except OSError as e:
        _error = f"cannot load {LIBRARY}: {e}; rebuild it with `make deps`"


def load() -> None:
    """Raise unless the library is loaded."""
    preload()
    if _lib is None:
        raise FuseCapsError(_error)


def _flag(name: str) -> int:
    if _lib is None:
        return 0
    return ctypes.c_int.in_dll(_lib, name).value


def check_wrapped() -> None:
    """Raise unless pyfuse3's session was made through the wrapper (it was
    not if pyfuse3 had bound fuse_session_new before ``load``)."""
    if _flag("peapod_sessions_wrapped") < 1:
        raise FuseCapsError(
            f"pyfuse3 did not call fuse_session_new through {LIBRARY.name}: pyfuse3 "
            "was imported before the peafs package (import peafs first)")


def session_fd() -> int:
    """The FUSE session's descriptor (-1 before ``pyfuse3.init``)."""
    return _lib.peapod_session_fd() if _lib is not None else -1


def session_exited() -> bool:
    """Whether the session was told to end (``pyfuse3.terminate``)."""
    return _lib is None or bool(_lib.peapod_session_exited())
