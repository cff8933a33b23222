"""Renames racing path walks never hand a pod process a host file.

One pod process swaps a directory with a symlink pointing outside the staging
directory (renameat2 RENAME_EXCHANGE, and plain rename-away + symlink in its
place), thousands of times; another pod process, whose working directory is
inside the swapped directory, keeps opening ``../secret``, the same file by
absolute path, creating and removing files next to it and listing it. A daemon
that kept paths (strings) instead of inode handles would, at some point,
resolve ``staging/a/dir/...`` through the symlink and serve the host
directory. Through PeaFS the walker only ever sees the real file, ENOENT (the
kernel followed the symlink inside the pod root, where its target does not
exist) or ELOOP/ENOTDIR in the middle of a swap.
"""

from __future__ import annotations

import os
import threading

from helpers_attack import host_tree, make_outside, policy, run_py

POLICY_ALL = policy('[pea.all.files]\n"/" = "rwx"\n')
SECONDS = 10
MAX_SWAPS = 4000
MAX_WALKS = 6000

RACER = r'''
seconds, max_swaps = float(ARGS[0]), int(ARGS[1])
AT_FDCWD, RENAME_EXCHANGE = -100, 2
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
def exchange(a, b):
    _check(libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), RENAME_EXCHANGE),
           "renameat2")
os.symlink(ARGS[2], "/a/lnk")      # absolute host path of the outside directory
os.symlink(ARGS[3], "/a/rlnk")     # relative: ../../outside seen from the staging dir
for _ in range(2000):              # the walker first settles in /a/dir/sub
    if os.path.exists("/a/walker-ready"):
        break
    time.sleep(0.01)
# RENAME_EXCHANGE is optional for a FUSE file system (EINVAL if it lacks it):
# then the plain rename swap below is the race.
can_exchange = attempt(exchange, "/a/lnk", "/a/rlnk") == "OK"
if can_exchange:
    exchange("/a/lnk", "/a/rlnk")
deadline = time.monotonic() + seconds
swaps = 0
while swaps < max_swaps and time.monotonic() < deadline:
    link = "/a/lnk" if swaps % 2 == 0 else "/a/rlnk"
    if can_exchange:
        exchange("/a/dir", link)   # /a/dir is now the symlink
        exchange("/a/dir", link)   # and back
    os.rename("/a/dir", "/a/away") # move away, a symlink in its place
    os.symlink(ARGS[2], "/a/dir")
    os.unlink("/a/dir")
    os.rename("/a/away", "/a/dir")
    swaps += 1
os.close(os.open("/a/racer-done", os.O_WRONLY | os.O_CREAT, 0o644))
report({"swaps": swaps, "exchange": can_exchange})
'''

WALKER = r'''
seconds, max_walks, marker = float(ARGS[0]), int(ARGS[1]), ARGS[2]
os.chdir("/a/dir/sub")
os.close(os.open("/a/walker-ready", os.O_WRONLY | os.O_CREAT, 0o644))
seen, listings_with_marker, created, walks = {}, 0, 0, 0
deadline = time.monotonic() + seconds
def create(name):
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b"W")
    os.close(fd)
while walks < max_walks and time.monotonic() < deadline and not os.path.exists("/a/racer-done"):
    for p in ("../secret", "/a/dir/secret", "/a/dir/sub/../secret", "../../dir/secret"):
        v = try_read(p)
        seen[v] = seen.get(v, 0) + 1
    name = f"../new-{walks}"
    if attempt(create, name) == "OK":
        created += 1
        attempt(os.unlink, name)
    for d in ("..", "/a/dir"):
        try:
            if marker in os.listdir(d):
                listings_with_marker += 1
        except OSError:
            pass
    walks += 1
report({"walks": walks, "seen": seen, "created": created,
        "listings_with_marker": listings_with_marker})
'''


def test_rename_swap_race_never_reaches_outside(peafs_mount, tmp_path):
    root = tmp_path / "root"
    (root / "a" / "dir" / "sub").mkdir(parents=True)
    (root / "a" / "dir" / "secret").write_text("INSIDE")
    outside, canary = make_outside(tmp_path)
    marker = f"marker-{os.urandom(4).hex()}"
    (outside / marker).write_text("outside")
    before = host_tree(outside)
    m = peafs_mount(POLICY_ALL, root=root)

    reports: dict[str, dict] = {}
    errors: list[BaseException] = []

    def racer():
        try:
            reports["racer"] = run_py(
                m, "all", RACER, SECONDS, MAX_SWAPS, str(outside),
                os.path.relpath(outside, root / "a"), timeout=SECONDS + 60)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
            errors.append(e)

    t = threading.Thread(target=racer)
    t.start()
    try:
        reports["walker"] = run_py(m, "all", WALKER, SECONDS + 5, MAX_WALKS, marker,
                                   timeout=SECONDS + 60)
    finally:
        t.join(SECONDS + 90)
    if errors:
        raise errors[0]

    walker = reports["walker"]
    assert canary not in walker["seen"], f"the walker read the host canary: {walker}"
    assert walker["listings_with_marker"] == 0, f"the walker listed the host dir: {walker}"
    # Only the real file or the errors a swap in progress can give.
    assert set(walker["seen"]) <= {"INSIDE", "ENOENT", "ELOOP", "ENOTDIR"}, walker
    assert walker["seen"].get("INSIDE", 0) > 0, "the walk never reached the file"
    assert reports["racer"]["swaps"] > 100, reports["racer"]
    # Nothing was created, changed or removed outside.
    assert host_tree(outside) == before
    assert (root / "a" / "dir" / "secret").read_text() == "INSIDE"
