"""Fixtures for PeaFS tests (need root and /dev/fuse; they never skip).

``peafs_mount`` is a factory:

    m = peafs_mount(policy_toml, root=None, pod=None)

- ``policy_toml`` is a policy, usually only its ``[pea.*]`` tables. The
  factory supplies what the ``[pod]`` table lacks: ``name`` (a fresh
  ``t<hex>``, or ``pod``), ``root`` (``root`` if given, else a fresh staging
  dir under tmp_path), ``uid_map``/``gid_map`` (``[[0, 200000, 65536]]``:
  pod uid U is host uid 200000 + U) and ``default_pea`` (the first pea).
  Mounting the same ``root`` again in one test reuses its pod name, so state
  kept per pod (hard-link rules, the audit log) carries over, as across a
  daemon restart.
- the mount point is a fresh directory under a 0755 /tmp/peafs-mnt-* (pytest's
  own base directory is 0700: pod users could not reach it).
- the mount is made with ``peafs mount`` (the CLI, with a timeout), with
  $PEAPOD_RUN set to a directory under tmp_path (also set in os.environ for
  the test, so ``peafs`` commands the test runs find the mount).
- the returned ``PeaMount`` has ``.mountpoint``, ``.root``, ``.policy_path``,
  ``.pod``, ``.state_dir``, ``.run(cmd, pea, user=0, **subprocess_kwargs)``
  (``peafs run``; capture_output/text default to True, timeout to 60 s),
  ``.py(code, pea, user=0, *args)`` (``/usr/bin/python3 -c code`` through
  ``.run``; a pod user cannot traverse /root, where the venv lives),
  ``.audit() -> list[dict]``, ``.daemon_pid()`` and ``.umount()``.
- teardown: ``peafs umount``; ``fusermount3 -u -z`` as a last resort; every
  process left in the pod's cgroups killed; the cgroups removed.

``peafs_module_mount`` is the same factory with module scope (its mounts are
shared by a module's tests; PEAPOD_RUN is passed to each command, not set in
os.environ).

``run_in_pea(pod, pea)`` returns a preexec_fn that puts a subprocess into a
pea (as host root, no user namespace) for tests that need that.
"""

from __future__ import annotations


import pytest

from peafs_support import MountFactory

@pytest.fixture
def peafs_mount(tmp_path, monkeypatch):
    factory = MountFactory(tmp_path)
    monkeypatch.setenv("PEAPOD_RUN", str(factory.run_dir))
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture(scope="module")
def peafs_module_mount(tmp_path_factory):
    """The same factory, for mounts shared by a whole test module."""
    factory = MountFactory(tmp_path_factory.mktemp("peafs"))
    try:
        yield factory
    finally:
        factory.cleanup()
