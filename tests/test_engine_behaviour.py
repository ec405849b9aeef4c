"""Engine behaviours: hysteresis, publishing rules, tombstones, generations, pending store, triggers."""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest
from streams import delete_message, doc_message, event_message, records, run_engine, sums_by_id

from stream_nudge.config import load_config
from stream_nudge.engine import Engine
from stream_nudge.messages import Record, is_validation


def toy(n_docs=30, dim=8, n_train=60, n_val=20, seed=0):
    """Documents and clicks where nudging clearly helps (queries are distorted documents)."""
    rng = np.random.default_rng(seed)
    docs = rng.normal(size=(n_docs, dim))
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    warp = np.eye(dim) + 0.8 * rng.normal(size=(dim, dim)) / np.sqrt(dim)
    doc_msgs = [doc_message(f"d{i}", docs[i]) for i in range(n_docs)]
    events = []
    for n in range(n_train + n_val):
        target = int(rng.integers(0, n_docs // 2))
        q = warp @ docs[target] + 0.3 * rng.normal(size=dim) / np.sqrt(dim)
        split = "validation" if n % 4 == 3 and n // 4 < n_val else "train"
        events.append(event_message(f"q{n}", q, f"d{target}", split, ts=1000.0 + n))
    return doc_msgs, events


def test_hysteresis_keeps_gamma_unless_the_gain_is_large_enough():
    doc_msgs, events = toy()
    only_final = {"every_events": 0, "every_seconds": 0}
    moved, _ = run_engine(
        records(doc_msgs, events), {"gamma": {**only_final, "min_improvement": 0.0}}
    )
    assert moved.gamma > 0
    gain = moved.last_selection.value_after - moved.last_selection.value_before
    assert gain > 0
    stuck, sink = run_engine(
        records(doc_msgs, events), {"gamma": {**only_final, "min_improvement": gain + 1e-9}}
    )
    assert stuck.gamma == 0.0
    assert not stuck.last_selection.changed and stuck.last_selection.candidate > 0
    assert sink.messages == []  # gamma 0 moves nothing, so nothing is published


def test_selections_happen_at_exact_event_counts_whatever_the_batching():
    doc_msgs, events = toy()
    counts = []
    for batch in (1, 7, 1000):
        engine, _ = run_engine(
            records(doc_msgs, events), {"gamma": {"every_events": 25, "every_seconds": 0}}, batch
        )
        counts.append([s.events for s in engine.selection_history])
    assert counts[0] == counts[1] == counts[2]
    assert counts[0][:3] == [25, 50, 75] and counts[0][-1] == 80


def test_event_time_triggers_selection():
    doc_msgs, events = toy()
    engine, _ = run_engine(
        records(doc_msgs, events), {"gamma": {"every_events": 0, "every_seconds": 10}}
    )
    # ts runs 1000, 1001, ...: a selection every 10 s of event time, plus the final one.
    assert [s.events for s in engine.selection_history] == [11, 21, 31, 41, 51, 61, 71, 80]


def test_updates_carry_growing_generations_and_deletes_publish_tombstones():
    doc_msgs, events = toy()
    recs = records(doc_msgs, events) + [
        Record("docs", delete_message("d0")),
        Record("docs", delete_message("d0")),
    ]
    engine, sink = run_engine(recs, {"gamma": {"every_events": 10}})
    last_generation = {}
    for key, value, line, _ in sink.messages:
        body = orjson.loads(line)
        assert body["generation"] > last_generation.get(key, 0)
        last_generation[key] = body["generation"]
        if value is None:
            assert body == {"id": key, "deleted": True, "generation": body["generation"]}
        else:
            assert body["gamma"] >= 0 and len(body["embedding"]) == 8
    assert sink.latest()["d0"] is None
    assert sum(1 for k, v, _, _ in sink.messages if v is None) == 1  # the second delete is a no-op
    assert engine.counts["deletes_unknown"] == 1
    assert "d0" not in engine.docs.row_of


def test_min_change_suppresses_small_moves_and_initial_publishes_everything():
    doc_msgs, events = toy()
    _, few = run_engine(records(doc_msgs, events), {"publish": {"min_change": 10.0}})
    assert few.messages == []
    _, every = run_engine(records(doc_msgs, events), {"publish": {"initial": True}})
    assert set(every.latest()) == {f"d{i}" for i in range(30)}
    # Also at gamma 0, with no click at all: every document goes out once, as it came.
    _, unclicked = run_engine(records(doc_msgs, []), {"publish": {"initial": True}})
    latest = unclicked.latest()
    assert set(latest) == {f"d{i}" for i in range(30)} and len(unclicked.messages) == 30
    for i, message in enumerate(doc_msgs):
        original = np.array(orjson.loads(message)["embedding"], dtype=np.float32)
        assert latest[f"d{i}"]["gamma"] == 0.0
        assert np.allclose(latest[f"d{i}"]["embedding"], original / np.linalg.norm(original))


def test_published_vectors_are_the_engines_embeddings():
    doc_msgs, events = toy()
    engine, sink = run_engine(records(doc_msgs, events), {"gamma": {"every_events": 15}})
    ids, embeddings = engine.adjusted()
    current = dict(zip(ids, embeddings, strict=True))
    for doc_id, body in sink.latest().items():
        assert (
            np.abs(np.array(body["embedding"]) - current[doc_id]).max()
            <= engine.params.publish.min_change
        )
        assert body["gamma"] == engine.gamma


def test_base64_updates_carry_the_json_updates_vectors_bit_for_bit():
    """publish.encoding base64: the same updates as JSON, each vector as base64 of its
    little-endian float32s, decoding to exactly the floats the JSON update spells."""
    doc_msgs, events = toy()
    overrides = {"gamma": {"every_events": 15}}
    _, as_json = run_engine(records(doc_msgs, events), overrides)
    _, as_b64 = run_engine(
        records(doc_msgs, events), overrides | {"publish": {"encoding": "base64"}}
    )
    json_updates, b64_updates = as_json.latest(), as_b64.latest()
    assert json_updates and json_updates.keys() == b64_updates.keys()
    for doc_id, body in b64_updates.items():
        vector = np.frombuffer(base64.b64decode(body.pop("embedding_b64"), validate=True), "<f4")
        expected = json_updates[doc_id]
        assert vector.tolist() == np.array(expected.pop("embedding"), dtype=np.float32).tolist()
        assert body == expected


def test_upsert_of_a_known_document_replaces_its_original_and_keeps_its_sum():
    recs = [
        Record("docs", doc_message("a", [1.0, 0.0])),
        Record("events", event_message("q", [0.0, 2.0], "a", "train")),
        Record("docs", doc_message("a", [0.0, -3.0])),
    ]
    engine, _ = run_engine(recs)
    assert np.allclose(sums_by_id(engine)["a"], [0.0, 2.0])
    assert np.allclose(engine.docs.originals[engine.docs.row_of["a"]], [0.0, -1.0])


def test_events_for_unseen_documents_wait_and_overflow_goes_to_dead_letters():
    v = [0.0, 1.0]
    recs = [Record("events", event_message(f"q{i}", v, "late", "train")) for i in range(5)]
    recs.append(Record("docs", doc_message("late", [1.0, 0.0])))
    engine, sink = run_engine(recs, {"pending": {"max_events": 3}})
    assert [d.reason for d in sink.dead_letters] == ["pending_overflow"] * 2
    assert engine.dead_letters["pending_overflow"] == 2
    assert np.allclose(sums_by_id(engine)["late"], [0.0, 3.0])  # the 3 that waited were applied
    assert engine.pending_count == 0


def test_split_by_stable_hash_of_the_query_id():
    doc_msgs = [doc_message("a", [1.0, 0.0])]
    events = [event_message(f"user-query-{i}", [0.0, 1.0], "a") for i in range(2000)]
    engine, _ = run_engine(
        records(doc_msgs, events), {"validation": {"fraction": 0.25, "window": 5000}}
    )
    n_val = engine.counts["validation_events"]
    assert 400 < n_val < 600
    assert n_val == sum(is_validation(f"user-query-{i}", 0.25) for i in range(2000))


def test_gamma_zero_publishes_nothing_and_empty_input_is_fine():
    engine = Engine(load_config())
    assert engine.finish().message_count == 0
    assert engine.adjusted()[0] == []


@pytest.mark.parametrize("method", ["nudge-n", "nudge-m"])
def test_nudge_n_publishes_unit_vectors_and_nudge_m_says_dot(method):
    doc_msgs, events = toy()
    _, sink = run_engine(records(doc_msgs, events), {"method": method})
    bodies = [b for b in sink.latest().values() if b is not None]
    assert bodies
    for body in bodies:
        norm = np.linalg.norm(body["embedding"])
        if method == "nudge-n":
            assert body["similarity"] == "cosine" and abs(norm - 1) < 1e-5
        else:
            assert body["similarity"] == "dot"


def test_clicks_left_by_a_failed_batch_keep_their_own_vectors(monkeypatch):
    """A batch that stops half way (an exception) leaves its earlier training clicks buffered.
    They keep their vectors, not the rows of the next batch's vector array, and are added with
    the next batch's clicks."""
    rng = np.random.default_rng(3)
    queries = rng.normal(size=(3, 4)).astype(np.float32)
    engine = Engine(load_config())
    engine.process(records([doc_message("a", [1, 0, 0, 0]), doc_message("b", [0, 1, 0, 0])], []))
    failing = [
        event_message("q0", queries[0], "a", "train"),
        event_message("q1", queries[1], "b", "train"),
        event_message("v", queries[2], "a", "validation"),
    ]

    def fail(*args):
        raise RuntimeError("stopped half way")

    monkeypatch.setattr(engine.ingest, "_validation_event", fail)
    with pytest.raises(RuntimeError):
        engine.process(records([], failing))
    monkeypatch.undo()
    engine.process(records([], [event_message("q2", queries[2], "b", "train")]))
    sums = sums_by_id(engine)
    assert np.array_equal(sums["a"], queries[0].astype(np.float64))
    assert np.array_equal(sums["b"], queries[1].astype(np.float64) + queries[2])


def test_a_query_belongs_to_one_split_and_a_conflicting_event_is_a_dead_letter():
    # A training query that later comes as validation (here with the answer it trained): counted
    # in both, it validated its own nudge (hit@1 0 -> 1 on nothing learnable).
    docs = [doc_message("a", [1.0, 0.0]), doc_message("b", [0.6, 0.8])]
    q = [0.0, 1.0]
    events = [
        event_message("q1", q, "a", "train"),
        event_message("q1", q, "a", "validation"),
        event_message("q1", q, "b", "train"),  # same split, another answer: fine
        event_message("q2", q, "b"),  # no split: the stable hash decides, and remembers it
        event_message("q2", q, "a", "validation" if not is_validation("q2", 0.1) else "train"),
    ]
    engine, sink = run_engine(records(docs, events), {"gamma": {"every_events": 0}})
    assert [d.reason for d in sink.dead_letters] == ["split_conflict", "split_conflict"]
    assert "'q1' came as train before" in sink.dead_letters[0].detail
    assert engine.events == 3 and len(engine.window) == int(is_validation("q2", 0.1))
    # Remembered across a checkpoint too.
    from stream_nudge.engine import restore, snapshot

    again = restore(engine.params, *snapshot(engine))
    out = again.process([Record("events", event_message("q1", q, "b", "validation"))])
    assert [d.reason for d in out.dead_letters] == ["split_conflict"]
