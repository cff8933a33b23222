"""PeaFS's id translation (peafs/ids.py), in-process."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from peafs.ids import OVERFLOW_ID, IdMap, Ids

ONE = [(0, 200000, 65536)]
SPLIT = [(0, 300000, 1000), (1000, 500000, 10)]


def test_one_range_both_ways():
    m = IdMap(ONE)
    assert m.to_host(0) == 200000 and m.to_host(65535) == 265535
    assert m.to_virtual(200000) == 0 and m.to_virtual(265535) == 65535


def test_ids_outside_the_map():
    m = IdMap(ONE)
    # On disk but unmapped: shown as the overflow id, owned by no pod.
    assert m.to_host(65536) == OVERFLOW_ID and m.to_host(-1) == OVERFLOW_ID
    # From a request but unmapped (host root, another pod): none.
    assert m.to_virtual(0) is None and m.to_virtual(199999) is None
    assert m.to_virtual(265536) is None
    assert m.to_virtual(OVERFLOW_ID) is None


def test_several_ranges():
    m = IdMap(SPLIT)
    assert m.to_host(999) == 300999 and m.to_host(1000) == 500000 and m.to_host(1009) == 500009
    assert m.to_host(1010) == OVERFLOW_ID
    assert m.to_virtual(500009) == 1009 and m.to_virtual(301000) is None


def test_the_map_as_proc_lines_and_as_json():
    m = IdMap(SPLIT)
    assert m.lines().split("\n")[:2] == ["0 300000 1000", "1000 500000 10"]
    assert m.as_list() == [[0, 300000, 1000], [1000, 500000, 10]]
    # Any 3-sequence will do (policy IdRange tuples, lists from state.json).
    assert IdMap([[0, 200000, 5]]).to_host(4) == 200004


def test_uid_and_gid_maps_are_separate():
    ids = Ids(ONE, SPLIT)
    assert ids.uid.to_host(5) == 200005 and ids.gid.to_host(5) == 300005


@given(st.integers(0, 65535))
def test_a_mapped_id_goes_there_and_back(v):
    m = IdMap(ONE)
    assert m.to_virtual(m.to_host(v)) == v


@given(st.integers(-10, 1 << 32))
def test_to_host_never_answers_an_id_outside_the_range(v):
    h = IdMap(ONE).to_host(v)
    assert h == OVERFLOW_ID or 200000 <= h < 265536


def test_immutable_by_slots():
    m = IdMap(ONE)
    with pytest.raises(AttributeError):
        m.other = 1
