"""kernel/names.py: the pod and pea name rule, and its one owner."""

from __future__ import annotations

import pytest

from kernel import names


@pytest.mark.parametrize("name", ["a", "mail", "web-2", "a" * 31, "x0-"])
def test_good_names(name):
    assert names.NAME_RE.match(name)


@pytest.mark.parametrize("name", ["", "A", "1pod", "-a", "a" * 32, "a/b", "..", "a b",
                                  "a\n", "a\x00", "é"])
def test_bad_names(name):
    # "a\n": the rule ends at \Z, where "$" would let a final newline through.
    assert not names.NAME_RE.match(name)


def test_one_owner():
    import rules.validate
    from pods import runtime

    assert rules.validate.NAME_RE is names.NAME_RE
    assert runtime.NAME_RE is names.NAME_RE
    with pytest.raises(ValueError):
        runtime.RunDir("/run/peapod").pod_dir("a\n")


def test_the_cgroup_prefix_is_the_pods_directory():
    from kernel import cgroup

    assert names.CGROUP_PREFIX == "peapod"
    assert cgroup.pod_cgroup("x").parent.name == names.CGROUP_PREFIX
