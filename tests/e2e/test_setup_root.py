"""How examples/*/setup builds a pod root (examplelib.ensure_root), on a
stand-in build function: never half-built, a left-over directory refused,
and a rebuild drops the previous root's hard-link rules (kept beside it in
ROOT.peapod/links.json, pods/runtime.lasting_dir) but keeps its audit log."""

from __future__ import annotations

import pytest

from pods.runtime import lasting_dir


def _build(text, links=True):
    def build(tmp):
        (tmp / "x").write_text(text)
        for link in ("bin", "lib", "lib64", "sbin") if links else ():
            (tmp / link).symlink_to(f"usr/{link}")
    return build


def test_a_rebuild_drops_the_old_link_rules_and_keeps_the_audit_log(e2e, tmp_path):
    ex = e2e.examplelib
    root = tmp_path / "root"
    ex.ensure_root(root, _build("1"), rebuild=False, running=False)
    lasting = lasting_dir(root)
    lasting.mkdir()
    (lasting / "links.json").write_text('{"/srv/data/l": {"a": ["r", ""]}}')
    (lasting / "audit.log").write_text('{"pea": "a"}\n')
    ex.ensure_root(root, _build("2"), rebuild=False, running=False)   # built: kept as it is
    assert (root / "x").read_text() == "1" and (lasting / "links.json").exists()
    with pytest.raises(ex.SetupError, match="stop the pod first"):
        ex.ensure_root(root, _build("2"), rebuild=True, running=True)
    ex.ensure_root(root, _build("2"), rebuild=True, running=False)
    assert (root / "x").read_text() == "2"
    assert not (lasting / "links.json").exists()
    assert (lasting / "audit.log").read_text() == '{"pea": "a"}\n'


def test_a_failed_build_leaves_nothing_and_a_left_over_root_is_refused(e2e, tmp_path):
    ex = e2e.examplelib
    root = tmp_path / "root"

    def failing(tmp):
        (tmp / "half").write_text("x")
        raise ex.SetupError("the package mirror has no such package")

    with pytest.raises(ex.SetupError, match="no such package"):
        ex.ensure_root(root, failing, rebuild=False, running=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    root.mkdir()
    with pytest.raises(ex.SetupError, match="a root left over"):
        ex.ensure_root(root, _build("1"), rebuild=False, running=False)


def test_a_root_from_an_older_setup_asks_for_a_rebuild(e2e, tmp_path):
    """Roots built before the policies mounted /usr alone lack the usr-merge
    links: reusing one would start a pod without /lib64/ld-linux-x86-64.so.2."""
    ex = e2e.examplelib
    root = tmp_path / "root"
    ex.ensure_root(root, _build("old", links=False), rebuild=False, running=False)
    with pytest.raises(ex.SetupError, match="built by an older setup .* run setup with --rebuild"):
        ex.ensure_root(root, _build("new"), rebuild=False, running=False)
    ex.ensure_root(root, _build("new"), rebuild=True, running=False)
    assert (root / "x").read_text() == "new"
