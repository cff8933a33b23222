"""PeaFS: the pyfuse3 + trio file system of a pod (docs/ARCHITECTURE.md).

The library that adds the symlink cache to pyfuse3's FUSE capabilities
(fusecaps.py) is loaded here, before any module of the package imports
pyfuse3: CPython loads extension modules with RTLD_NOW, so pyfuse3's call
of fuse_session_new is bound when pyfuse3 is imported, and only a library
already in the global scope then can take it. Loading never raises here;
mounting does (session.py), with the reason.
"""

from . import fusecaps

fusecaps.preload()
