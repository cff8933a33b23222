"""The inode table (peafs/inodes.py) on a temporary directory, in-process.

O_PATH descriptors and name_to_handle_at need no privilege; re-opening by
handle (open_by_handle_at) needs CAP_DAC_READ_SEARCH, so without it the
table pins every descriptor (as on a file system without handles) and the
tests below hold either way. What a lookup of the kernel would do is done
here by hand: open the name O_PATH | O_NOFOLLOW under the parent's
descriptor, stat it, ``remember`` it.
"""

from __future__ import annotations

import os
import stat

import pytest

from peafs import inodes
from peafs.inodes import OPEN_PATH, ROOT_ID, InodeTable, LookupCountError


@pytest.fixture(params=["handles", "pinned"])
def tree(request, tmp_path, monkeypatch):
    """A staging tree and its table: with kernel file handles (when this
    process may open them: else it is pinned too), and pinned (a file
    system that makes no handles: every descriptor kept)."""
    if request.param == "pinned":
        monkeypatch.setattr(inodes, "handle_of", lambda fd, name=b"": None)
    root = tmp_path / "root"
    (root / "d" / "sub").mkdir(parents=True)
    (root / "d" / "f").write_text("f")
    (root / "g").write_text("g")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    table = InodeTable(fd, fd_cache=8)
    try:
        yield root, table
    finally:
        table.close_all()
        os.close(fd)


def look(table, parent, name):
    """One kernel lookup of ``parent/name``."""
    fd = os.open(name, OPEN_PATH, dir_fd=parent.fd)
    return table.remember(parent, name, fd, os.fstat(fd))


def find(table, parent, name):
    pfd = parent.fd
    return table.find_child(pfd, name, os.stat(name, dir_fd=pfd, follow_symlinks=False))


def test_the_root_is_always_there(tree):
    _, table = tree
    assert table[ROOT_ID] is table.root and table.paths(table.root) == [()]
    table.forget(ROOT_ID, 5)            # the kernel never drops the root
    assert table.get(ROOT_ID) is table.root and table.root.lookups == 1


def test_remember_counts_lookups_of_one_object(tree):
    _, table = tree
    d = look(table, table.root, "d")
    assert d.is_dir and d.lookups == 1 and table[d.id] is d
    again = look(table, table.root, "d")
    assert again is d and d.lookups == 2
    f = look(table, d, "f")
    assert f.id != d.id and f.fmt == stat.S_IFREG
    assert table.paths(f) == [("d", "f")]
    assert len(table) == 3


def test_forget_to_zero_drops_the_entry(tree):
    _, table = tree
    g = look(table, table.root, "g")
    look(table, table.root, "g")
    table.forget(g.id, 1)
    assert table.get(g.id) is g and g.lookups == 1 and g.alive
    table.forget(g.id, 1)
    assert table.get(g.id) is None and not g.alive and g._fd is None
    # A forget of an id already dropped is ignored.
    table.forget(g.id, 1)


def test_a_lookup_count_below_zero_fails_loudly(tree):
    _, table = tree
    g = look(table, table.root, "g")
    with pytest.raises(LookupCountError, match="forgot more references"):
        table.forget(g.id, 2)
    # The entry is dropped first, as the kernel wants: the table is never
    # left half-updated, and the count is not negative.
    assert table.get(g.id) is None and not g.alive and g.lookups == 0


def test_a_forgotten_leaf_comes_back_as_a_new_entry(tree):
    _, table = tree
    g = look(table, table.root, "g")
    old_id, key = g.id, g.key
    table.forget(g.id, 1)
    del g                   # nothing holds a forgotten leaf: the weak map lets it go
    g2 = look(table, table.root, "g")
    assert g2.key == key and g2.id != old_id and g2.lookups == 1
    assert table.get(old_id) is None and table[g2.id] is g2


def test_a_forgotten_parent_is_revived_as_the_same_entry(tree):
    _, table = tree
    d = look(table, table.root, "d")
    f = look(table, d, "f")
    table.forget(d.id, 1)           # the kernel evicts the directory, not its child
    assert table.get(d.id) is None and not d.alive
    # Still a name: the child's path is exact.
    assert table.paths(f) == [("d", "f")]
    d2 = look(table, table.root, "d")
    if d.handle is None:
        # Pinned: with its descriptor closed nothing proves that the object
        # now behind the key is the one forgotten (its inode number may have
        # been reused), so it is a new entry, and the old one stays the
        # child's parent by name.
        assert d2 is not d and d2.id != d.id and not d.alive
        assert table.paths(f) == [("d", "f")] and table.paths(d2) == [("d",)]
        return
    # Its handle proves it the same object: the same entry, the same id.
    assert d2 is d and d.alive and d.lookups == 1 and table[d.id] is d
    assert os.stat("f", dir_fd=d.fd).st_ino == os.stat(f"/proc/self/fd/{f.fd}").st_ino


def test_an_entry_whose_inode_number_was_reused_is_not_revived(tree):
    root, table = tree
    d = look(table, table.root, "d")
    g = look(table, d, "f")
    table.forget(g.id, 1)
    old = g
    # The file is replaced: if the new one gets the same inode number, the
    # handle (with its generation) or the missing descriptor tells them apart.
    os.unlink(root / "d" / "f")
    (root / "d" / "f").write_text("new")
    g2 = look(table, d, "f")
    assert g2 is not old and g2.id != old.id and g2.lookups == 1 and g2.alive
    assert table.paths(g2) == [("d", "f")]


def test_paths_of_a_hard_link(tree):
    root, table = tree
    os.link(root / "g", root / "d" / "g2")
    d = look(table, table.root, "d")
    g = look(table, table.root, "g")
    g2 = look(table, d, "g2")
    assert g2 is g and g.lookups == 2
    assert sorted(table.paths(g)) == [("d", "g2"), ("g",)]
    assert find(table, d, "g2") is g and find(table, table.root, "g") is g


def test_unlinked_keeps_the_last_name(tree):
    root, table = tree
    os.link(root / "g", root / "d" / "g2")
    d = look(table, table.root, "d")
    g = look(table, table.root, "g")
    look(table, d, "g2")
    os.unlink(root / "d" / "g2")
    table.unlinked(g, d, "g2")
    assert table.paths(g) == [("g",)]
    # The last name stays: an object unlinked while open keeps its path.
    os.unlink(root / "g")
    table.unlinked(g, table.root, "g")
    assert table.paths(g) == [("g",)]
    table.unlinked(None, table.root, "g")        # an entry the table never held


def test_renamed_moves_a_name_and_everything_below(tree):
    root, table = tree
    d = look(table, table.root, "d")
    sub = look(table, d, "sub")
    f = look(table, d, "f")
    os.rename(root / "d", root / "e")
    table.renamed(d, table.root, "d", table.root, "e")
    assert table.paths(sub) == [("e", "sub")] and table.paths(f) == [("e", "f")]
    os.rename(root / "e" / "f", root / "e" / "sub" / "f")
    table.renamed(f, d, "f", sub, "f")
    assert table.paths(f) == [("e", "sub", "f")]
    assert find(table, sub, "f") is f


def test_find_child_knows_only_what_the_table_holds(tree):
    root, table = tree
    d = look(table, table.root, "d")
    assert find(table, d, "f") is None          # never looked up
    f = look(table, d, "f")
    assert find(table, d, "f") is f


def test_held_and_remember_again(tree):
    _, table = tree
    d = look(table, table.root, "d")
    st = os.stat("f", dir_fd=d.fd, follow_symlinks=False)
    assert table.held(d.fd, "f", st) is None
    f = look(table, d, "f")
    assert table.held(d.fd, "f", st) is f
    assert table.remember_again(f, d, "f") is f and f.lookups == 2
    table.forget(f.id, 2)
    assert table.held(d.fd, "f", st) is None        # forgotten: not live


def test_the_root_reached_by_a_name_is_the_root(tree):
    root, table = tree
    os.symlink(".", root / "self")          # not followed: a symlink object
    link = look(table, table.root, "self")
    assert link.fmt == stat.S_IFLNK and link is not table.root
    # A bind mount of the root inside itself would give the root's key.
    fd = os.open(".", OPEN_PATH, dir_fd=table.root.fd)
    assert table.remember(table.root, "again", fd, os.fstat(fd)) is table.root


def test_descriptors_are_a_bounded_cache(tree):
    root, table = tree
    for i in range(30):
        (root / f"n{i}").write_text(str(i))
    entries = [look(table, table.root, f"n{i}") for i in range(30)]
    assert len(table._cached) <= table.fd_cache
    # Every entry still reaches its own object, evicted or not.
    for i, ino in enumerate(entries):
        with open(f"/proc/self/fd/{ino.fd}") as fh:
            assert fh.read() == str(i)
    # A forgotten evicted entry opens nothing.
    ino = entries[0]
    table.forget(ino.id, 1)
    with pytest.raises(OSError):
        ino.fd


def test_the_fuse_forget_logs_a_bad_count_and_keeps_serving(tree, capsys):
    # pyfuse3 ends its loop (unmounting the pod) on any exception from
    # forget: the adapter logs this one and goes on with the batch.
    import trio
    import rules
    from peafs.fs import PeaFS
    from peafs.ids import Ids

    root, _ = tree
    policy = rules.loads('[pod]\nname = "t"\nroot = "/r"\ndefault_pea = "p"\n[pea.p]\n')
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    fs = PeaFS(fd, policy, Ids(policy.uid_map, policy.gid_map), enforcer=None, links=None)
    try:
        g = look(fs.table, fs.table.root, "g")
        d = look(fs.table, fs.table.root, "d")
        trio.run(fs.forget, [(g.id, 3), (d.id, 1)])
        assert "LookupCountError" in capsys.readouterr().err
        assert fs.table.get(g.id) is None and fs.table.get(d.id) is None
    finally:
        fs.table.close_all()
        os.close(fd)
