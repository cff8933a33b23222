"""kernel/idmap.py: pod ids <-> host ids, at every range boundary."""

from __future__ import annotations

import pytest

from kernel import idmap
from rules.policy import IdRange

# Two ranges, as a policy or state.json gives them (named tuples or lists).
MAP = (IdRange(0, 100000, 1000), IdRange(1000, 200000, 10))
AS_LISTS = [[0, 100000, 1000], [1000, 200000, 10]]


@pytest.mark.parametrize("ranges", [MAP, AS_LISTS])
def test_boundaries(ranges):
    assert idmap.to_host(ranges, 0) == 100000
    assert idmap.to_host(ranges, 999) == 100999
    assert idmap.to_host(ranges, 1000) == 200000      # the next range starts
    assert idmap.to_host(ranges, 1009) == 200009
    assert idmap.to_host(ranges, 1010) is None        # one past the last
    assert idmap.to_host(ranges, -1) is None
    assert idmap.to_pod(ranges, 99999) is None
    assert idmap.to_pod(ranges, 100000) == 0
    assert idmap.to_pod(ranges, 100999) == 999
    assert idmap.to_pod(ranges, 101000) is None       # the gap between ranges
    assert idmap.to_pod(ranges, 199999) is None
    assert idmap.to_pod(ranges, 200009) == 1009
    assert idmap.to_pod(ranges, 200010) is None
    assert idmap.is_mapped(ranges, 0) and idmap.is_mapped(ranges, 1009)
    assert not idmap.is_mapped(ranges, 1010)


def test_round_trip():
    for pod_id in range(0, 1010):
        assert idmap.to_pod(MAP, idmap.to_host(MAP, pod_id)) == pod_id


def test_empty_and_zero_length_ranges_map_nothing():
    for ranges in ((), [(5, 500, 0)]):
        assert idmap.to_host(ranges, 5) is None
        assert idmap.to_pod(ranges, 500) is None
        assert not idmap.is_mapped(ranges, 5)


def test_lines_are_the_kernel_s_format():
    assert idmap.lines(MAP) == "0 100000 1000\n1000 200000 10\n"
    assert idmap.lines(AS_LISTS) == idmap.lines(MAP)
    assert idmap.lines(()) == ""
