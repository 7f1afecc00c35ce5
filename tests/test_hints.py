"""Hints as stored: merging a start's recording, and leaving settled hints alone."""

from __future__ import annotations

from blobstore.image.hints import HintList, hints_key, load_hints, read_hints, save_hints
from blobstore.store.memory import MemoryStore

from .conftest import CountsRequests

MID = "ab" * 32


class Counting(CountsRequests, MemoryStore):
    pass


def test_a_start_in_the_order_the_hints_gave_writes_nothing():
    objects = Counting()
    assert save_hints(objects, MID, "w", {3: 0.1, 1: 0.2, 7: 0.3})
    stored = read_hints(objects, MID, "w")
    objects.gets.clear(), objects.puts.clear()
    assert not save_hints(objects, MID, "w", {3: 0.5, 1: 0.6, 7: 0.9}, stored)
    assert objects.gets == [] and objects.puts == []  # given what was read: no GET, no PUT


def test_a_start_that_reads_more_or_in_another_order_is_merged():
    objects = Counting()
    save_hints(objects, MID, "w", {3: 0.1, 1: 0.2})
    assert save_hints(objects, MID, "w", {3: 0.1, 1: 0.2, 9: 0.3})  # a chunk more
    assert load_hints(objects, MID, "w") == [3, 1, 9]
    assert save_hints(objects, MID, "w", {9: 0.0, 3: 0.6, 1: 0.7})  # another order
    assert load_hints(objects, MID, "w") == [9, 3, 1]  # means 0.2, 0.27, 0.37
    assert read_hints(objects, MID, "w").runs == 3
    assert objects.puts == [hints_key(MID, "w")] * 3


def test_the_first_start_is_written_even_when_it_reads_nothing_new():
    objects = Counting()
    assert save_hints(objects, MID, "w", {}, HintList())
    assert read_hints(objects, MID, "w").runs == 1
