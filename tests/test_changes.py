"""The change log against a set-per-reader oracle, and the document table's use of it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import examples

from stream_nudge.engine import changes
from stream_nudge.engine.changes import ChangeLog
from stream_nudge.engine.state import DocumentTable

SETTINGS = settings(
    max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# Touch a row, touch several, or let reader 0, 1 or 2 read what changed since its mark.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("touch"), st.integers(0, 15)),
        st.tuples(st.just("touch_many"), st.lists(st.integers(0, 15), max_size=6)),
        st.tuples(st.just("read"), st.integers(0, 2)),
    ),
    max_size=80,
)


@SETTINGS
@given(steps, st.sampled_from([1, 3, 4096]))
def test_each_reader_gets_exactly_the_rows_changed_since_its_mark(ops, min_journal):
    """Three readers with their own marks; a small journal forces the scan of versions for a
    reader that fell behind, a large one never trims."""
    kept = changes._MIN_JOURNAL
    changes._MIN_JOURNAL = min_journal
    try:
        log = ChangeLog(4)
        log.grow(16)
        marks = [log.mark] * 3
        pending: list[set[int]] = [set(), set(), set()]  # the oracle
        for op in ops:
            if op[0] == "touch":
                log.touch(op[1])
                rows = {op[1]}
            elif op[0] == "touch_many":
                log.touch(np.array(op[1], dtype=np.int64))
                rows = set(op[1])
            else:
                reader = op[1]
                got = log.since(marks[reader])
                marks[reader] = log.mark
                assert got.tolist() == sorted(pending[reader])
                pending[reader] = set()
                continue
            for seen in pending:
                seen |= rows
        for reader in range(3):
            assert log.since(marks[reader]).tolist() == sorted(pending[reader])
    finally:
        changes._MIN_JOURNAL = kept


def test_versions_rise_with_every_change_of_a_row():
    """What the selection cache relies on: a row's version differs once the row changed."""
    log = ChangeLog(3)
    log.touch(1)
    first = log.versions.copy()
    log.touch(np.array([2, 2]))
    assert log.versions[1] == first[1] and log.versions[2] > first[1]
    log.touch(1)
    assert log.versions[1] > first[1]
    assert log.versions[0] == 0


def test_the_document_table_logs_upserts_deletes_and_clicks():
    table = DocumentTable(2, capacity=2, slot_capacity=1)
    unit = np.array([1.0, 0.0], dtype=np.float32)
    mark = table.changes.mark
    a, _ = table.upsert("a", unit)
    b, _ = table.upsert("b", unit)
    c, _ = table.upsert("c", unit)  # grows the rows: the log grows with them
    assert table.changes.since(mark).tolist() == sorted([a, b, c])
    mark = table.changes.mark
    table.add(np.array([b, b]), np.ones(2), np.array([[0.0, 1.0], [0.0, 1.0]], dtype=np.float32))
    assert table.changes.since(mark).tolist() == [b]
    mark = table.changes.mark
    table.upsert("a", np.array([0.0, 1.0], dtype=np.float32))  # a replaced original
    table.delete("c")
    assert table.changes.since(mark).tolist() == sorted([a, c])
    mark = table.changes.mark
    table.delete("unknown")
    table.add(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros((0, 2), dtype=np.float32))
    assert table.changes.since(mark).tolist() == []


# Touch rows, delete one (with an id), or let the pinned reader (0) or the other (1) read.
steps_with_deletes = st.lists(
    st.one_of(
        st.tuples(st.just("touch"), st.integers(0, 7)),
        st.tuples(st.just("delete"), st.integers(0, 7)),
        st.tuples(st.just("read"), st.integers(0, 1)),
    ),
    max_size=80,
)


@SETTINGS
@given(steps_with_deletes, st.sampled_from([1, 3, 4096]))
def test_a_pinned_reader_gets_every_deleted_id_however_small_the_journal(ops, min_journal):
    """The ids deleted since a pinned reader's mark, in order, whatever trimming the other
    reader's activity causes; the journal never drops what the pinned reader has not read."""
    kept = changes._MIN_JOURNAL
    changes._MIN_JOURNAL = min_journal
    try:
        log = ChangeLog(8)
        marks = [log.mark, log.mark]
        log.pin(marks[0])
        deleted: list[str] = []  # the oracle, for the pinned reader
        rows: list[set[int]] = [set(), set()]
        serial = 0
        for op in ops:
            if op[0] == "touch":
                log.touch(op[1])
                for seen in rows:
                    seen.add(op[1])
            elif op[0] == "delete":
                serial += 1
                log.touch_deleted(op[1], f"doc-{serial}")
                deleted.append(f"doc-{serial}")
                for seen in rows:
                    seen.add(op[1])
            else:
                reader = op[1]
                assert log.since(marks[reader]).tolist() == sorted(rows[reader])
                if reader == 0:
                    assert log.deleted_since(marks[0]) == deleted
                    deleted = []
                rows[reader] = set()
                marks[reader] = log.mark
                if reader == 0:
                    log.pin(marks[0])
        assert log.deleted_since(marks[0]) == deleted
    finally:
        changes._MIN_JOURNAL = kept


def test_deletions_older_than_the_journal_are_refused_not_lost():
    kept = changes._MIN_JOURNAL
    changes._MIN_JOURNAL = 1
    try:
        log = ChangeLog(2)
        log.touch_deleted(0, "gone")
        for _ in range(10):  # an unpinned journal is trimmed as it grows
            log.touch(1)
        with pytest.raises(LookupError):
            log.deleted_since(0)
    finally:
        changes._MIN_JOURNAL = kept


def test_the_document_table_logs_the_ids_it_deletes():
    table = DocumentTable(2)
    unit = np.array([1.0, 0.0], dtype=np.float32)
    for doc_id in ("a", "b", "c"):
        table.upsert(doc_id, unit)
    mark = table.changes.mark
    table.delete("b")
    table.delete("unknown")
    table.upsert("b", unit)  # back again: its id is in the changed rows, alive
    table.delete("a")
    assert table.changes.deleted_since(mark) == ["b", "a"]
    alive = [table.ids[r] for r in table.changes.since(mark) if table.alive[r]]
    assert alive == ["b"]


def test_a_pin_holds_the_journal_however_much_changes_after_it():
    kept = changes._MIN_JOURNAL
    changes._MIN_JOURNAL = 1
    try:
        log = ChangeLog(2)
        log.pin(log.mark)
        log.touch_deleted(0, "first")
        for _ in range(50):  # far past the size at which an unpinned journal is trimmed
            log.touch(1)
        assert log.deleted_since(0) == ["first"]
        assert log.since(0).tolist() == [0, 1]
        log.pin(log.mark)  # read: the journal may be trimmed again
        for _ in range(50):
            log.touch(1)
        with pytest.raises(LookupError):
            log.deleted_since(0)
    finally:
        changes._MIN_JOURNAL = kept
