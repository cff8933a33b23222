"""Pod user names: looked up in the pod's own /etc/passwd, from the host.

Used by `pod exec --user NAME` and by services with ``user = "NAME"``
(pods/services.py). The file is pod root's, read by host root: see
``lookup`` for what that demands.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kernel import libc
from kernel.text import shown


class UserError(Exception):
    """A user that cannot be resolved; the message is for the administrator."""


PASSWD_MAX = 1 << 20


def lookup(root: Path, user: str) -> tuple[int, int]:
    """(uid, gid) of ``user`` (pod ids) in the /etc/passwd of the pod whose
    staging directory is ``root``; UserError says why not.

    The file is pod root's: it may be a symlink to a host file (/etc/shadow,
    a file of crafted lines), a FIFO that never answers, a device, or huge.
    We are host root, so the open is confined to the pod's tree: openat2
    with RESOLVE_IN_ROOT resolves every symlink and ".." as if the staging
    directory were "/", and no magic link (/proc/self/root) leaves it. The
    file is opened O_PATH first and only a regular file is opened for
    reading (through that descriptor, so it is the same file): no FIFO or
    device is ever opened. At most PASSWD_MAX bytes are read."""
    try:
        root_fd = os.open(Path(root), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise UserError(f"the pod's root {root}: {e.strerror}")
    try:
        fd = libc.openat2(root_fd, "etc/passwd", os.O_PATH | os.O_CLOEXEC,
                          libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS)
    except FileNotFoundError:
        fd = None
    except OSError as e:
        raise UserError(f"the pod's /etc/passwd: {e.strerror}")
    finally:
        os.close(root_fd)
    data = b""
    if fd is not None:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UserError("the pod's /etc/passwd is not a regular file")
            rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
            try:
                while len(data) <= PASSWD_MAX:
                    chunk = os.read(rfd, 65536)
                    if not chunk:
                        break
                    data += chunk
            finally:
                os.close(rfd)
        except OSError as e:
            raise UserError(f"the pod's /etc/passwd: {e.strerror}")
        finally:
            os.close(fd)
        if len(data) > PASSWD_MAX:
            raise UserError(f"the pod's /etc/passwd is larger than {PASSWD_MAX >> 20} MiB")
    wanted = os.fsencode(user)
    for line in data.split(b"\n"):
        fields = line.split(b":")
        # name:password:uid:gid:gecos:home:shell; a malformed line is skipped,
        # as the C library's getpwnam skips it.
        if len(fields) >= 4 and fields[0] == wanted and fields[2].isdigit() \
                and fields[3].isdigit():
            return int(fields[2]), int(fields[3])
    raise UserError(f"no user {shown(user)} in the pod's /etc/passwd")


