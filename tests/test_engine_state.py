"""The engine's state: order-independent sums, the window against a deque, exact score caches."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streams import delete_message, doc_message, event_message, run_engine, sums_by_id

from stream_nudge.config import load_config
from stream_nudge.engine import Engine, ValidationWindow
from stream_nudge.messages import Record

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def click_streams(draw):
    n_docs = draw(st.integers(1, 6))
    dim = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    docs = rng.normal(size=(n_docs, dim))
    n_events = draw(st.integers(0, 14))
    targets = [
        draw(st.lists(st.integers(0, n_docs - 1), min_size=1, max_size=3)) for _ in range(n_events)
    ]
    queries = rng.normal(size=(n_events, dim)) * rng.choice([1e-3, 1.0, 1e3], size=(n_events, 1))
    weights = [draw(st.sampled_from([1.0, 0.5, 2.0, -1.0])) for _ in range(n_events)]
    return docs, queries, targets, weights


@SETTINGS
@given(click_streams(), st.randoms(use_true_random=False), st.integers(1, 7))
def test_final_sums_do_not_depend_on_order_batching_or_document_arrival(stream, rnd, batch_size):
    docs, queries, targets, weights = stream
    doc_recs = [Record("docs", doc_message(f"d{i}", v)) for i, v in enumerate(docs)]
    event_recs = [
        Record("events", event_message(f"q{n}", q, [f"d{t}" for t in ts], "train", w))
        for n, (q, ts, w) in enumerate(zip(queries, targets, weights, strict=True))
    ]
    reference, _ = run_engine(doc_recs + event_recs, batch_size=1000)
    shuffled = list(event_recs)
    rnd.shuffle(shuffled)
    # Each document arrives at a random point: before, between or after its clicks.
    mixed = list(shuffled)
    for rec in doc_recs:
        mixed.insert(rnd.randint(0, len(mixed)), rec)
    other, _ = run_engine(mixed, batch_size=batch_size)
    expected, got = sums_by_id(reference), sums_by_id(other)
    assert expected.keys() == got.keys()
    for doc_id in expected:
        np.testing.assert_allclose(got[doc_id], expected[doc_id], rtol=1e-12, atol=1e-9)
    assert other.pending_count == 0


@SETTINGS
@given(st.integers(1, 5), st.lists(st.tuples(st.integers(0, 9), st.integers(0, 3)), max_size=60))
def test_window_is_the_latest_queries_by_first_arrival(capacity, clicks):
    window = ValidationWindow(capacity, 2, 1)
    oracle: OrderedDict[str, dict[str, float]] = OrderedDict()
    for q, d in clicks:
        qid, did = f"q{q}", f"d{d}"
        expected_evicted = None
        if qid not in oracle and len(oracle) == capacity:
            expected_evicted = oracle.popitem(last=False)
        oracle.setdefault(qid, {})
        oracle[qid][did] = oracle[qid].get(did, 0.0) + 1.0
        evicted = window.add(qid, np.array([1.0, float(q)], np.float32), did, 1.0)
        if expected_evicted is None:
            assert evicted is None
        else:
            assert evicted[0] == expected_evicted[0] and evicted[2] == expected_evicted[1]
            assert np.array_equal(evicted[1], [1.0, float(expected_evicted[0][1:])])
        assert list(window.order) == list(oracle)
        assert {q: window.answers[window.slot_of[q]] for q in window.order} == dict(oracle)


def test_evicted_queries_fold_into_training_sums():
    v = np.array([0.0, 1.0])
    recs = [Record("docs", doc_message("a", [1.0, 0.0]))]
    recs += [
        Record("events", event_message(f"q{i}", v * (i + 1), "a", "validation")) for i in range(3)
    ]
    folded, _ = run_engine(recs, {"validation": {"window": 2, "fold_evicted": True}})
    kept, _ = run_engine(recs, {"validation": {"window": 2, "fold_evicted": False}})
    assert np.allclose(sums_by_id(folded)["a"], v)  # q0 left the window and joined training
    assert not sums_by_id(kept)["a"].any()


@st.composite
def operations(draw):
    ops = []
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["doc", "doc", "delete", "train", "val", "val", "check"]))
        ops.append(
            (kind, draw(st.integers(0, 7)), draw(st.integers(0, 5)), draw(st.integers(0, 2**16)))
        )
    return ops


def brute_force_others(engine, slot, k):
    docs, window = engine.docs, engine.window
    answers = {docs.row_of[d] for d in window.answers[slot] if d in docs.row_of}
    untouched = np.flatnonzero(docs.untouched_mask())
    pool = [r for r in untouched if r not in answers]
    scores = sorted((float(window.unit[slot] @ docs.originals[r]) for r in pool), reverse=True)[:k]
    return scores + [-np.inf] * (k - len(scores))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations(), st.sampled_from([1, 2, 3]))
def test_score_caches_always_give_the_exact_best_untouched_scores(ops, k):
    engine = Engine(load_config(overrides={"objective": f"hit@{k}", "validation": {"window": 4}}))
    dim = 3
    for kind, a, b, seed in ops:
        v = np.random.default_rng(seed).normal(size=dim)
        if kind == "doc":
            msg = Record("docs", doc_message(f"d{a}", v))
        elif kind == "delete":
            msg = Record("docs", delete_message(f"d{a}"))
        elif kind in ("train", "val"):
            msg = Record(
                "events",
                event_message(f"q{b}", v, f"d{a}", "train" if kind == "train" else "validation"),
            )
        else:
            if engine.window is None or not len(engine.window):
                continue
            engine.ingest.flush(engine.docs)
            engine.selector.sync_caches(engine.docs, engine.window)
            slots = engine.window.active_slots()
            others, stale = engine.window.others(slots)
            engine.window.refresh(
                slots[stale],
                engine.docs.originals,
                engine.docs.untouched_mask(),
                engine.docs.row_of.get,
            )
            others, stale = engine.window.others(slots)
            assert not stale.any()
            for i, slot in enumerate(slots):
                np.testing.assert_allclose(
                    others[i], brute_force_others(engine, slot, k), rtol=1e-5, atol=1e-6
                )
            continue
        engine.process([msg])


def test_a_refresh_of_many_queries_over_a_large_corpus_is_exact():
    """More queries than fit the pass's block beside the small first block (> 4096), and enough
    documents for several blocks: every query's cache is its true best untouched non-answers."""
    from stream_nudge.engine.window import CACHE_SPARE, ValidationWindow

    rng = np.random.default_rng(5)
    n_docs, dim, n_q = 3000, 4, 4500
    originals = rng.normal(size=(n_docs, dim)).astype(np.float32)
    originals /= np.linalg.norm(originals, axis=1, keepdims=True)
    untouched = rng.random(n_docs) > 0.1
    window = ValidationWindow(n_q, dim, 1)
    for i in range(n_q):
        window.add(f"q{i}", rng.normal(size=dim).astype(np.float32), f"d{i % n_docs}", 1.0)
    slots = window.active_slots()
    window.refresh(slots, originals, untouched, lambda d: int(d[1:]))
    scores = window.unit[slots] @ originals.T
    scores[:, ~untouched] = -np.inf
    scores[np.arange(n_q), np.arange(n_q) % n_docs] = -np.inf
    best = -np.sort(-scores, axis=1)[:, : 1 + CACHE_SPARE]
    np.testing.assert_allclose(window.cache_scores[slots], best, rtol=1e-5, atol=1e-6)


@SETTINGS
@given(st.integers(0, 300), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_pass_candidates_are_exactly_the_entries_above_threshold(n_docs, n_q, seed):
    from stream_nudge.engine.window import _above

    rng = np.random.default_rng(seed)
    # Few distinct values, so that entries equal to the threshold come up.
    table = rng.integers(-3, 4, size=(n_docs, n_q)).astype(np.float32)
    table[rng.random(table.shape) < 0.1] = -np.inf
    threshold = rng.integers(-3, 4, size=n_q).astype(np.float32)
    q, r, scores = _above(table, threshold)
    got = sorted(zip(q.tolist(), r.tolist(), scores.tolist(), strict=True))
    er, eq = np.nonzero(table > threshold)
    expected = sorted(zip(eq.tolist(), er.tolist(), table[er, eq].tolist(), strict=True))
    assert got == expected
