"""The document table's batched bookkeeping against one-at-a-time oracles."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_nudge.engine import slots
from stream_nudge.engine.state import DocumentTable

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Operations on documents d0..d7: upsert, delete, or a batch of clicks (row index, weight, vector).
# Weights of opposite sign and zero vectors make sums cancel to zero, so documents stop moving.
operations = st.lists(
    st.one_of(
        st.tuples(st.just("upsert"), st.integers(0, 7)),
        st.tuples(st.just("delete"), st.integers(0, 7)),
        st.tuples(
            st.just("clicks"),
            st.lists(
                st.tuples(
                    st.integers(0, 7),
                    st.sampled_from([1.0, 1.0, -1.0, 0.5]),
                    st.lists(st.sampled_from([0.0, 1.0, -1.0, 0.1, 3e5]), min_size=2, max_size=2),
                ),
                max_size=12,
            ),
        ),
    ),
    max_size=25,
)


@SETTINGS
@given(operations, st.sampled_from([1, 2, 3, 64]))
def test_sums_slots_and_moving_flags_match_one_click_at_a_time(ops, rows_at_once):
    """Also with the sums updated a row, two or three rows at a time, so that the pieces' edges
    fall everywhere in a batch of clicks."""
    kept = slots._ROWS_AT_ONCE
    slots._ROWS_AT_ONCE = rows_at_once
    try:
        check_sums_against_one_click_at_a_time(ops)
    finally:
        slots._ROWS_AT_ONCE = kept


def check_sums_against_one_click_at_a_time(ops):
    table = DocumentTable(2, capacity=2, slot_capacity=1)
    sums: dict[str, np.ndarray] = {}  # the oracle: each document's sum, added click by click
    clicks: dict[str, int] = {}
    for op in ops:
        if op[0] == "upsert":
            table.upsert(f"d{op[1]}", np.ones(2, dtype=np.float32))
        elif op[0] == "delete":
            table.delete(f"d{op[1]}")
            sums.pop(f"d{op[1]}", None)
            clicks.pop(f"d{op[1]}", None)
        else:
            known = [(f"d{i}", w, v) for i, w, v in op[1] if f"d{i}" in table.row_of]
            if not known:
                continue
            rows = np.array([table.row_of[d] for d, _, _ in known])
            weights = np.array([w for _, w, _ in known])
            vectors = np.array([v for _, _, v in known], dtype=np.float32)
            moved = table.is_nudged(np.unique(rows))
            touched, before, after = table.add(rows, weights, vectors)
            assert sorted(touched.tolist()) == np.unique(rows).tolist()
            order = np.argsort(touched)
            assert before[order].tolist() == moved.tolist()
            assert after[order].tolist() == table.is_nudged(np.sort(touched)).tolist()
            for (doc_id, w, _), v in zip(known, vectors, strict=True):
                contribution = v.astype(np.float64) * w if w != 1.0 else v.astype(np.float64)
                sums[doc_id] = sums.get(doc_id, np.zeros(2)) + contribution
                clicks[doc_id] = clicks.get(doc_id, 0) + 1
        rows = np.array(sorted(table.row_of.values()), dtype=np.int64)
        expected_moving = []
        for row in rows:
            doc_id = table.ids[row]
            slot = table.slot_of[row]
            got = table.slots.sums[slot] if slot >= 0 else np.zeros(2)
            assert np.array_equal(got, sums.get(doc_id, np.zeros(2)))
            assert (table.slots.clicks[slot] if slot >= 0 else 0) == clicks.get(doc_id, 0)
            expected_moving.append(bool(np.any(sums.get(doc_id, np.zeros(2)) != 0.0)))
        assert table.is_nudged(rows).tolist() == expected_moving
        assert table.nudged_rows().tolist() == rows[np.array(expected_moving, dtype=bool)].tolist()
        # Every slot in use belongs to exactly one live row, and free slots are zeroed.
        used = table.slot_of[rows]
        used = used[used >= 0]
        assert len(set(used.tolist())) == len(used)
        assert set(used.tolist()).isdisjoint(table.slots.free)
        for slot in table.slots.free:
            assert not table.slots.sums[slot].any() and not table.slots.moving[slot]
    # Recomputing the flags from the sums (as a restore does) changes nothing.
    before = table.slots.moving.copy()
    table.slots.recount()
    assert np.array_equal(table.slots.moving, before)


upserts = st.lists(st.sampled_from([0.0, 1.0, -1.0, 0.3]), min_size=2, max_size=2).filter(any)


@SETTINGS
@given(operations, st.lists(upserts, min_size=25, max_size=25))
def test_cached_geometry_equals_a_fresh_computation(ops, originals):
    """After any mix of clicks, upserts that replace an original, and deletes that free slots for
    reuse, the cached directions and planes are what computing them afresh gives, bit for bit."""
    from stream_nudge.core.geometry import rotation, turnable, unit_rows

    table = DocumentTable(2, capacity=2, slot_capacity=1)
    for step, op in enumerate(ops):
        if op[0] == "upsert":
            vector = np.array(originals[step], dtype=np.float32)
            table.upsert(f"d{op[1]}", unit_rows(vector[None, :])[0][0])
        elif op[0] == "delete":
            table.delete(f"d{op[1]}")
        else:
            known = [(table.row_of[f"d{i}"], w, v) for i, w, v in op[1] if f"d{i}" in table.row_of]
            if known:
                rows, weights, vectors = zip(*known, strict=True)
                table.add(np.array(rows), np.array(weights), np.array(vectors, dtype=np.float32))
        nudged = table.nudged_rows()
        # Ask every other step, so that some changes pile up between two questions.
        if step % 2 or len(nudged) == 0:
            continue
        planes = step % 4 == 0
        directions, tangents, angles, can = table.geometry(nudged, planes=planes)
        fresh = table.directions(nudged)
        assert np.array_equal(directions, fresh.astype(np.float32))
        if planes:
            plane = rotation(table.originals[nudged].astype(np.float64), fresh)
            assert np.array_equal(tangents, plane.tangent.astype(np.float32))
            assert np.array_equal(angles, plane.angle)
            assert np.array_equal(can, turnable(table.originals[nudged], fresh))


def test_published_table_is_grown_only_when_used_and_keeps_its_rows():
    """The [slots, dim] table of published vectors is not grown with the sums (ingest before the
    first selection never reads it); once asked for, it covers every slot and keeps its rows
    across later growths."""
    table = DocumentTable(2, capacity=2, slot_capacity=1)
    rows = [table.upsert(f"d{i}", np.array([1.0, 0.0], dtype=np.float32))[0] for i in range(40)]
    table.add(np.array(rows[:5]), np.ones(5), np.ones((5, 2), dtype=np.float32))
    assert table.slots._published.size == 0  # five slots of sums, no published table yet
    slots = table.slot_of[rows[:5]]
    table.slots.published[slots] = np.arange(10, dtype=np.float32).reshape(5, 2)
    table.add(np.array(rows[5:]), np.ones(35), np.ones((35, 2), dtype=np.float32))
    assert len(table.slots.published) == len(table.slots.sums) >= 40
    assert table.slots.published[slots].tolist() == np.arange(10).reshape(5, 2).tolist()
