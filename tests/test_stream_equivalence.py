"""Replay equals ``fine_tune`` on generated streams, whatever the stream's history.

Hypothesis draws small retrieval problems and writes them as a stream in the message contract:
documents (some arriving after their clicks), training and validation events in a random order
(one event per query with all its answers, or one per (query, answer)), JSON or base64 vectors,
re-deliveries of random events at random later places, and periodic re-selection of gamma every
1 to 30 events in batches of any size. The engine's final state must be what ``fine_tune``
computes from the same queries and answers, up to the rounding bound of ``rounding.py``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rounding import VALUE_TOLERANCE, assert_same_region, embedding_bound
from strategies import examples
from streams import doc_message, event_message, run_engine

from stream_nudge import fine_tune
from stream_nudge.messages import Record, encode_output

SETTINGS = settings(
    max_examples=examples(50), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def problems(draw):
    """(docs, train queries, their answers and weights, validation queries, their answers)."""
    dim = draw(st.integers(2, 5))
    n_docs = draw(st.integers(2, 10))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lattice = draw(st.booleans())

    def vectors(n):
        if lattice:
            # Small integers: exact ties and parallel sums come up often.
            x = rng.integers(-2, 3, size=(n, dim)).astype(np.float64)
            x[~x.any(axis=1), 0] = 1.0
            return x
        return rng.normal(size=(n, dim))

    def answers(n):
        return [
            sorted(
                rng.choice(
                    n_docs, size=int(rng.integers(1, min(3, n_docs) + 1)), replace=False
                ).tolist()
            )
            for _ in range(n)
        ]

    n_train, n_val = draw(st.integers(0, 12)), draw(st.integers(1, 8))
    weights = rng.choice([1.0, 1.0, 2.0, 0.5], size=n_train)
    return (
        vectors(n_docs),
        vectors(n_train),
        answers(n_train),
        weights,
        vectors(n_val),
        answers(n_val),
    )


def stream(problem, rng, b64: bool, duplicates: int) -> list[Record]:
    """The problem as records: events shuffled, some documents after them, some re-delivered."""
    docs, train, train_answers, weights, val, val_answers = problem
    events = []
    for split, queries, answers in (
        ("train", train, train_answers),
        ("validation", val, val_answers),
    ):
        for i, doc_rows in enumerate(answers):
            doc_ids = [f"d{r}" for r in doc_rows]
            weight = float(weights[i]) if split == "train" else None
            groups = [doc_ids] if rng.random() < 0.5 else [[d] for d in doc_ids]
            for group in groups:
                events.append(
                    event_message(f"{split[0]}{i}", queries[i], group, split, weight, b64=b64)
                )
    messages = [("events", m) for m in (events[i] for i in rng.permutation(len(events)))]
    for _ in range(duplicates):
        if messages:
            copy = messages[int(rng.integers(len(messages)))]
            messages.insert(int(rng.integers(len(messages) + 1)), copy)
    late = rng.random(len(docs)) < 0.3  # these documents arrive after the events (clicks wait)
    early = [("docs", doc_message(f"d{r}", docs[r], b64)) for r in np.flatnonzero(~late)]
    later = [("docs", doc_message(f"d{r}", docs[r], b64)) for r in np.flatnonzero(late)]
    return [Record(topic, m, position=n) for n, (topic, m) in enumerate(early + messages + later)]


@pytest.mark.parametrize("method", ["nudge-n", "nudge-m"])
@SETTINGS
@given(
    problem=problems(),
    objective=st.sampled_from(["hit@1", "hit@2", "mrr@3", "ndcg@3"]),
    every=st.integers(1, 30),
    batch_size=st.integers(1, 40),
    b64=st.booleans(),
    duplicates=st.integers(0, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_replay_equals_fine_tune_on_generated_streams(
    method, problem, objective, every, batch_size, b64, duplicates, seed
):
    rng = np.random.default_rng(seed)
    overrides = {
        "method": method,
        "objective": objective,
        "validation": {"window": 64},
        "gamma": {"every_events": every, "every_seconds": 0, "min_improvement": 0.0},
        "publish": {"min_change": 0.0},
    }
    engine, sink = run_engine(stream(problem, rng, b64, duplicates), overrides, batch_size)
    docs, train, train_answers, weights, val, val_answers = problem
    # fine_tune gets the vectors the stream got: float32, as the messages carry them.
    docs, train, val = (np.asarray(x, np.float32) for x in (docs, train, val))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no validation query with an answer
        batch = fine_tune(docs, train, train_answers, val, val_answers, method, objective, weights)
        # The same arithmetic at the stream's own gamma: isolates the sums and the geometry
        # from the choice of gamma.
        at_stream_gamma = fine_tune(
            docs,
            train,
            train_answers,
            val,
            val_answers,
            method,
            objective,
            weights,
            gamma=engine.gamma,
        )
    assert engine.dead_letters == {}
    ids, embeddings = engine.adjusted()
    rows = np.array([int(i[1:]) for i in ids])
    assert sorted(rows.tolist()) == list(range(len(docs)))
    # NUDGE-M's embeddings grow with gamma (1 + gamma at most), and so does their rounding.
    scale = max(1.0, engine.gamma, batch.gamma) if method == "nudge-m" else 1.0
    assert np.abs(embeddings - at_stream_gamma.embeddings[rows]).max() <= 1e-5 * scale
    bound = embedding_bound(method, engine.gamma, batch.gamma)
    assert np.abs(embeddings - batch.embeddings[rows]).max() <= bound + 1e-5 * scale
    last = engine.last_selection
    chosen = batch.selection
    assert last is not None and chosen is not None
    assert_same_region(
        (last.candidate, last.low, last.high), (chosen.gamma, chosen.low, chosen.high)
    )
    assert engine.gamma == last.candidate
    assert last.value_after == pytest.approx(batch.validation.after, abs=VALUE_TOLERANCE)
    assert last.value_before == pytest.approx(batch.validation.before, abs=VALUE_TOLERANCE)
    # What was published, reduced by key, is the final state of every nudged document.
    for doc_id, update in sink.latest().items():
        got = np.array(update["embedding"], dtype=np.float32)
        assert np.array_equal(got, embeddings[ids.index(doc_id)]), doc_id


@pytest.mark.parametrize("method", ["nudge-n", "nudge-m"])
@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    problem=problems(),
    every=st.integers(1, 30),
    batch_size=st.integers(1, 12),
    duplicates=st.integers(0, 4),
    initial=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_restore_after_every_batch_changes_nothing(
    method, problem, every, batch_size, duplicates, initial, seed
):
    """Snapshot and restore (through JSON, as the checkpoint stores the metadata) at every batch
    boundary of a generated stream: the same messages, selections and final state, bit for bit,
    as one engine that ran straight through.

    A restored engine has no selection cache (its next selection is from scratch, equal to a
    cached one only up to rounding: ``test_selection_cache.py``), so the straight engine drops
    its cache at the same boundaries; everything else must survive the round trip exactly."""
    import json

    from stream_nudge.config import load_config
    from stream_nudge.engine import Engine

    records = stream(problem, np.random.default_rng(seed), False, duplicates)
    config = load_config(
        overrides={
            "method": method,
            "validation": {"window": 64},
            "gamma": {"every_events": every, "every_seconds": 0, "min_improvement": 0.0},
            "publish": {"min_change": 0.0, "initial": initial},
        }
    )
    straight, restored = Engine(config), Engine(config)
    batches = [records[i : i + batch_size] for i in range(0, len(records), batch_size)]
    for batch in batches + [None]:
        if batch is None:
            a, b = straight.finish(), restored.finish()
        else:
            a, b = straight.process(batch), restored.process(batch)
        assert encode_output(a.tombstones, a.updates) == encode_output(b.tombstones, b.updates)
        assert [r.gamma for r in a.selections] == [r.gamma for r in b.selections]
        arrays, meta = restored.to_state()
        restored = Engine.from_state(config, arrays, json.loads(json.dumps(meta)))
        straight.selection_cache.clear()
    assert restored.counts == straight.counts and restored.gamma == straight.gamma
    ids_a, emb_a = straight.adjusted()
    ids_b, emb_b = restored.adjusted()
    assert ids_a == ids_b and np.array_equal(emb_a, emb_b)
