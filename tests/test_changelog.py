"""The engine's changelog: the records written at each commit, compacted or not, rebuild an engine
that continues exactly as the one that wrote them (oracle: that engine, run straight through)."""

from __future__ import annotations

import json
import random

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import examples
from streams import delete_message, doc_message, event_message
from test_checkpoint import OVERRIDES, messages, stream
from test_stream_equivalence import problems
from test_stream_equivalence import stream as generated_stream

from stream_nudge.config import load_config
from stream_nudge.engine import Engine
from stream_nudge.engine.changelog import (
    DOCUMENTS,
    ENGINE,
    SUMS,
    ChangelogError,
    ChangelogWriter,
    Record,
    compact,
    decode_sum,
    encode_sum,
    encode_sums,
    engine_from_records,
)
from stream_nudge.messages import Record as Input
from stream_nudge.messages import encode_output

DECAY = {"decay": {"half_life_events": 9.0, "half_life_seconds": 20.0}}


def canonical(engine: Engine):
    """The engine's state with what may differ between equal engines taken out: sum slots are
    renumbered on a restore (they are the table's own business), and the checkpoint's arrays
    compared by content."""
    arrays, meta = engine.to_state()
    meta = json.loads(json.dumps(meta))
    # A query id in both generations is looked up in the current one: the previous copy is
    # never read again (and a changelog keeps one record per id).
    previous, current = meta["queries"]
    in_current = {entry[0] for entry in current}
    # (Their order in a generation is not looked at either.)
    meta["queries"] = [sorted(e for e in previous if e[0] not in in_current), sorted(current)]
    out = {"meta": meta}
    if engine.docs is not None:
        docs = engine.docs
        per_doc = {}
        for doc_id, row in docs.row_of.items():
            state = docs.document(row)
            per_doc[doc_id] = (
                row,
                state.original.tobytes(),
                None if state.sum is None else state.sum.tobytes(),
                state.clicks,
                np.array(state.stamp).tobytes(),
                None if state.published is None else state.published.tobytes(),
            )
        out["docs"] = per_doc
        out["rows"] = (docs.n_rows, list(docs.free_rows))
        for name in ("window_raw", "window_cache_rows", "window_cache_scores", "window_floor"):
            out[name] = arrays[name].tobytes()
    for name in ("pending_seqs", "pending_weights", "pending_vectors"):
        if name in arrays:
            out[name] = arrays[name].tobytes()
    return out


@pytest.mark.parametrize("decay", [False, True], ids=["plain", "decay"])
@pytest.mark.parametrize("compacted", [False, True], ids=["log", "compacted"])
def test_an_engine_rebuilt_from_the_changelog_at_every_batch_continues_exactly(decay, compacted):
    """Commit after every batch; at each commit an engine rebuilt from all records so far has the
    straight engine's state, and the one rebuilt at a split continues with the same messages."""
    config = load_config(overrides={**OVERRIDES, **(DECAY if decay else {})})
    recs = stream()
    straight = Engine(config)
    writer = ChangelogWriter(straight, fresh=True)
    log: list[Record] = []
    outputs = []
    for i in range(0, len(recs), 5):
        outputs.append(straight.process(recs[i : i + 5]))
        log.extend(writer.records())
        rebuilt = engine_from_records(config, _view(log, compacted))
        assert canonical(rebuilt) == canonical(straight), f"after record {i + 5}"
    outputs.append(straight.finish())
    log.extend(writer.records())

    for split in (0, 15, 40, 65, 100):
        first = Engine(config)
        w = ChangelogWriter(first, fresh=True)
        head, written = [], []
        for i in range(0, split, 5):
            head.append(first.process(recs[i : i + 5]))
            written.extend(w.records())
        second = engine_from_records(config, _view(written, compacted))
        tail = [second.process(recs[i : i + 5]) for i in range(split, len(recs), 5)]
        tail.append(second.finish())
        assert messages(head) + messages(tail) == messages(outputs), f"split at {split}"
        assert second.counts == straight.counts and second.generation == straight.generation


def _view(log: list[Record], compacted: bool) -> list[Record]:
    """The log as a compacted topic keeps it (the latest record of each key), or all of it."""
    if not compacted:
        return list(log)
    return [
        Record(store, key, value)
        for store, kept in compact(log).items()
        for key, value in kept.items()
    ]


@pytest.mark.parametrize("method", ["nudge-n", "nudge-m"])
@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    problem=problems(),
    every=st.integers(1, 30),
    batch_size=st.integers(1, 12),
    duplicates=st.integers(0, 4),
    remember=st.integers(2, 12),
    seed=st.integers(0, 2**32 - 1),
)
def test_restarting_from_the_changelog_after_every_batch_changes_nothing(
    method, problem, every, batch_size, duplicates, remember, seed
):
    """Generated streams (late documents, re-deliveries, a small query memory whose generations
    roll over often): an engine rebuilt from the changelog after every batch, and written on by a
    new writer, gives the same messages and final state as one that ran straight through. (As
    with checkpoints, a rebuilt engine has no selection cache: the straight one drops its cache at
    the same points, see test_stream_equivalence.)"""
    records = generated_stream(problem, np.random.default_rng(seed), False, duplicates)
    config = load_config(
        overrides={
            "method": method,
            "validation": {"window": 8},
            "queries": {"remember": remember},
            "gamma": {"every_events": every, "every_seconds": 0, "min_improvement": 0.0},
            "publish": {"min_change": 0.0},
        }
    )
    straight, restarted = Engine(config), Engine(config)
    writer = ChangelogWriter(restarted, fresh=True)
    log: list[Record] = []
    rng = random.Random(seed)
    batches = [records[i : i + batch_size] for i in range(0, len(records), batch_size)]
    for batch in batches + [None]:
        if batch is None:
            a, b = straight.finish(), restarted.finish()
        else:
            a, b = straight.process(batch), restarted.process(batch)
        assert encode_output(a.tombstones, a.updates) == encode_output(b.tombstones, b.updates)
        log.extend(writer.records())
        restarted = engine_from_records(config, _view(log, rng.random() < 0.5))
        writer = ChangelogWriter(restarted)
        straight.selection_cache.clear()
    assert canonical(restarted) == canonical(straight)


def test_a_commit_writes_only_what_changed():
    """After the first commit, a batch that touches one document writes that document's records
    (and the engine's small ones), not the corpus."""
    config = load_config(overrides={"validation": {"fraction": 0.0}})
    engine = Engine(config)
    writer = ChangelogWriter(engine, fresh=True)
    rng = np.random.default_rng(0)
    engine.process([_doc(f"d{i}", rng.normal(size=8)) for i in range(50)])
    first = writer.records()
    assert sum(r.store == DOCUMENTS for r in first) == 50
    engine.process([_event("q1", rng.normal(size=8), "d7")])
    second = writer.records()
    assert {(r.store, r.key) for r in second if r.store != ENGINE} == {(SUMS, b"d7")}
    total, clicks, _, _ = decode_sum(next(r.value for r in second if r.store == SUMS), 8)
    assert clicks == 1 and total.any()
    assert writer.records() == []  # nothing changed: nothing written, not even the scalars


def test_a_query_naming_another_document_later_is_written_and_no_other_query_is():
    """The writer reads the query memory's changes from its tail (an entry that changes moves to
    the end): a query that names a new document after other queries arrived is written again,
    alone, and the engine rebuilt from the records remembers both its documents."""
    config = load_config(overrides={"validation": {"fraction": 0.0}})
    engine = Engine(config)
    writer = ChangelogWriter(engine, fresh=True)
    rng = np.random.default_rng(0)
    engine.process([_doc(f"d{i}", rng.normal(size=8)) for i in range(5)])
    log = writer.records()
    for query_id, doc_id in [("q1", "d1"), ("q2", "d2"), ("q3", "d3"), ("q1", "d4")]:
        engine.process([_event(query_id, rng.normal(size=8), doc_id)])
        records = writer.records()
        log += records
    journal = [r for r in records if r.key.startswith(b"j:")]
    assert len(journal) == 1 and orjson.loads(journal[0].value[1:]) == {
        "q1": ["train", ["d1", "d4"]]
    }
    memory = engine_from_records(config, log).ingest.queries
    assert memory.get("q1") == ("train", ("d1", "d4")) and memory.get("q2") == ("train", ("d2",))
    assert canonical(engine_from_records(config, log)) == canonical(engine)


@pytest.mark.parametrize("decay", [False, True], ids=["plain", "decay"])
def test_the_sums_of_many_documents_encode_as_each_alone(decay):
    """encode_sums (a commit's sums records, all at once) against encode_sum of each document's
    state: byte for byte, with and without a published vector."""
    config = load_config(overrides={**OVERRIDES, **(DECAY if decay else {})})
    engine = Engine(config)
    engine.process(stream())
    docs = engine.docs
    rows = np.flatnonzero(docs.slot_of[: docs.n_rows] >= 0)
    # Some with a sum and nothing published yet (as before a first selection moves gamma off 0).
    docs.slots.has_published[docs.slot_of[rows[::3]]] = False
    assert len(rows) > 3 and 0 < docs.slots.has_published[docs.slot_of[rows]].sum() < len(rows)
    assert encode_sums(docs, rows) == [encode_sum(docs.document(r)) for r in rows.tolist()]


def test_a_deleted_document_leaves_tombstones_and_a_returning_one_no_old_sum():
    config = load_config(overrides={"validation": {"fraction": 0.0}})
    engine = Engine(config)
    writer = ChangelogWriter(engine, fresh=True)
    log = []
    rng = np.random.default_rng(1)
    engine.process([_doc("a", rng.normal(size=4)), _doc("b", rng.normal(size=4))])
    engine.process([_event("q", rng.normal(size=4), "a")])
    log += writer.records()
    # Deleted and back within one commit: the old sum must not come back with it.
    engine.process([_delete("a"), _doc("a", rng.normal(size=4))])
    engine.process([_delete("b")])
    records = writer.records()
    log += records
    assert Record(DOCUMENTS, b"b", None) in records and Record(SUMS, b"b", None) in records
    rebuilt = engine_from_records(config, log)
    assert set(rebuilt.docs.row_of) == {"a"}
    assert rebuilt.docs.document(rebuilt.docs.row_of["a"]).sum is None
    assert canonical(rebuilt) == canonical(engine)


@pytest.mark.parametrize(
    "record, message",
    [
        (Record(DOCUMENTS, b"d0", b"\x07" + bytes(40)), "format byte 07"),
        (Record(DOCUMENTS, b"d0", b"\x01" + bytes(10)), "11 bytes, expected"),
        (Record(SUMS, b"zz", None), None),
        (Record(SUMS, b"ghost", None), None),
        (Record(ENGINE, b"w:0", b"\x01\x02"), "too short"),
        (Record("nope", b"k", b"v"), "unknown store 'nope'"),
        (Record(ENGINE, b"j:0:99", b"\x01[[1,2]]"), "query memory record 'j:0:99' does not decode"),
        (Record(ENGINE, b"q:q1", b'\x01[0,"train",[]]'), "an earlier changelog format"),
    ],
)
def test_records_that_do_not_decode_are_refused_with_what_is_wrong(record, message):
    config = load_config()
    engine = Engine(config)
    writer = ChangelogWriter(engine, fresh=True)
    rng = np.random.default_rng(2)
    engine.process([_doc(f"d{i}", rng.normal(size=4)) for i in range(3)])
    log = writer.records()
    if message is None:  # tombstones of keys never written change nothing
        assert canonical(engine_from_records(config, log + [record])) == canonical(engine)
        return
    with pytest.raises(ChangelogError, match=message):
        engine_from_records(config, log + [record])


def test_a_sum_without_its_document_is_refused():
    config = load_config()
    engine = Engine(config)
    writer = ChangelogWriter(engine, fresh=True)
    engine.process([_doc("d0", np.ones(4))])
    log = writer.records()
    stray = Record(SUMS, b"ghost", b"\x01\x00" + bytes(8 * 4 + 24))
    with pytest.raises(ChangelogError, match="'ghost', which no documents record holds"):
        engine_from_records(config, log + [stray])


def test_an_empty_changelog_is_a_new_engine_and_records_without_scalars_are_refused():
    config = load_config()
    assert engine_from_records(config, []).docs is None
    with pytest.raises(ChangelogError, match="scalars"):
        engine_from_records(config, [Record(DOCUMENTS, b"d", b"\x01" + bytes(24))])


def _doc(doc_id, vector):
    return Input("docs", doc_message(doc_id, vector))


def _delete(doc_id):
    return Input("docs", delete_message(doc_id))


def _event(query_id, vector, doc_id):
    return Input("events", event_message(query_id, vector, doc_id, "train"))


@pytest.mark.parametrize("decay", [False, True], ids=["plain", "decay"])
def test_a_new_writer_on_a_restored_engine_writes_all_of_it(decay):
    """A checkpoint migrated into an empty changelog: the restored engine's change logs say
    nothing changed, yet a fresh writer's first records hold its whole state."""
    config = load_config(overrides={**OVERRIDES, **(DECAY if decay else {})})
    engine = Engine(config)
    recs = stream()
    for i in range(0, 60, 5):
        engine.process(recs[i : i + 5])
    arrays, meta = engine.to_state()
    restored = Engine.from_state(config, arrays, json.loads(json.dumps(meta)))
    records = ChangelogWriter(restored, fresh=True).records()
    rebuilt = engine_from_records(config, records)
    assert canonical(rebuilt) == canonical(engine)
    tail = [rebuilt.process(recs[i : i + 5]) for i in range(60, len(recs), 5)]
    straight = [engine.process(recs[i : i + 5]) for i in range(60, len(recs), 5)]
    assert messages(tail) == messages(straight)
