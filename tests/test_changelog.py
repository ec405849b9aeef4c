"""The document table's changelog: the records of its changes, compacted by key or not, rebuild
it document by document (oracle: the table itself)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import examples

from stream_nudge.engine.changelog import (
    ChangelogError,
    apply_records,
    decode_document,
    encode_document,
    records_since,
)
from stream_nudge.engine.slots import Decay
from stream_nudge.engine.state import DocumentTable

SETTINGS = settings(
    max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# Upserts, deletes, clicks (weights of both signs: sums cancel), publications, and commits (the
# changelog writer reads what changed since its last commit).
operations = st.lists(
    st.one_of(
        st.tuples(st.just("upsert"), st.integers(0, 6), st.integers(0, 3)),
        st.tuples(st.just("delete"), st.integers(0, 6)),
        st.tuples(
            st.just("clicks"),
            st.lists(st.tuples(st.integers(0, 6), st.sampled_from([1.0, -1.0, 0.5])), max_size=8),
        ),
        st.tuples(st.just("publish"), st.integers(0, 6)),
        st.tuples(st.just("commit")),
    ),
    max_size=40,
)

UNITS = np.array([[1, 0, 0], [0, 1, 0], [0.6, 0.8, 0], [0, 0.6, 0.8]], dtype=np.float32)


def by_id(table: DocumentTable) -> dict:
    """Each document's state, comparable (NaNs as strings)."""
    out = {}
    for doc_id, row in table.row_of.items():
        state = table.document(row)
        out[doc_id] = (
            state.original.tolist(),
            None if state.sum is None else state.sum.tolist(),
            state.clicks,
            tuple("nan" if math.isnan(x) else x for x in state.stamp),
            None if state.published is None else state.published.tolist(),
        )
    return out


@SETTINGS
@given(operations, st.booleans(), st.booleans(), st.floats(0.0, 1.0))
def test_the_records_of_every_commit_rebuild_the_table(ops, compact, decay, cut):
    """From nothing, and onto a table rebuilt from an earlier part of the log (a local cache,
    then the changelog's tail), compacted or not."""
    rng = np.random.default_rng(0)
    table = DocumentTable(3, capacity=2, slot_capacity=1, decay=Decay(5.0) if decay else None)
    log: list[tuple[bytes, bytes | None]] = []
    mark = table.changes.mark
    table.changes.pin(mark)
    events = 0
    for op in ops + [("commit",)]:
        if op[0] == "upsert":
            table.upsert(f"d{op[1]}", UNITS[op[2]])
        elif op[0] == "delete":
            table.delete(f"d{op[1]}")
        elif op[0] == "clicks":
            known = [(table.row_of[f"d{i}"], w) for i, w in op[1] if f"d{i}" in table.row_of]
            if known:
                events += len(known)
                rows = np.array([r for r, _ in known])
                vectors = rng.normal(size=(len(known), 3)).astype(np.float32)
                times = np.column_stack([np.full(len(known), float(events)), np.zeros(len(known))])
                table.add(rows, np.array([w for _, w in known]), vectors, times, (events, 0.0))
        elif op[0] == "publish":
            row = table.row_of.get(f"d{op[1]}")
            if row is not None and table.slot_of[row] >= 0:
                slot = table.slot_of[row]
                table.slots.published[slot] = rng.normal(size=3).astype(np.float32)
                table.slots.has_published[slot] = True
                table.changes.touch(row)  # as the publisher's write is a change to record
        else:
            log.extend(records_since(table, mark))
            mark = table.changes.mark
            table.changes.pin(mark)
    # A compacted topic keeps each key's last record.
    compacted = list(dict(log).items()) if compact else log
    rebuilt = DocumentTable(3, capacity=2, slot_capacity=1)
    apply_records(rebuilt, compacted)
    assert by_id(rebuilt) == by_id(table)
    at = int(cut * len(log))
    cached = DocumentTable(3, capacity=2, slot_capacity=1)
    apply_records(cached, log[:at])
    tail = list(dict(log[at:]).items()) if compact else log[at:]
    apply_records(cached, tail)
    assert by_id(cached) == by_id(table)
    log = compacted
    # Applying the same records again changes nothing (a restore may replay a tail twice).
    apply_records(rebuilt, log)
    assert by_id(rebuilt) == by_id(table)
    assert rebuilt.nudged_rows().size == table.nudged_rows().size


def test_a_record_that_does_not_fit_is_refused_with_what_is_wrong():
    table = DocumentTable(3)
    row, _ = table.upsert("a", UNITS[0])
    value = encode_document(table.document(row))
    assert decode_document(value, 3).original.tolist() == UNITS[0].tolist()
    with pytest.raises(ChangelogError, match="expected 14 for dimension 3"):
        decode_document(value[:-1], 3)
    with pytest.raises(ChangelogError, match="expected 26 for dimension 6"):
        decode_document(value, 6)
    with pytest.raises(ChangelogError, match="format byte 07"):
        decode_document(b"\x07" + value[1:], 3)


def test_a_document_deleted_and_back_without_clicks_loses_its_old_sum_in_the_cache():
    """The local cache holds d's clicked state; d is then deleted and comes back unclicked. The
    tail has no tombstone for d (it is alive), only its new state: applying it must drop the old
    sum, not keep it."""
    table = DocumentTable(3)
    row, _ = table.upsert("d", UNITS[0])
    table.add(np.array([row]), np.ones(1), UNITS[1:2])
    mark = table.changes.mark
    table.changes.pin(mark)
    head = records_since(table, 0)
    table.delete("d")
    table.upsert("d", UNITS[2])
    tail = records_since(table, mark)
    assert [value is None for _, value in tail] == [False]
    cached = DocumentTable(3)
    apply_records(cached, head)
    assert by_id(cached)["d"][1] is not None
    apply_records(cached, tail)
    assert by_id(cached) == by_id(table) and by_id(cached)["d"][1] is None
