"""Re-delivered events count once and a query keeps one split, within a memory bound."""

from __future__ import annotations

import numpy as np
import pytest
from streams import doc_message, event_message, records, run_engine, sums_by_id

from stream_nudge.config import ConfigError, load_config
from stream_nudge.engine import Engine, restore, snapshot
from stream_nudge.messages import Record


def test_a_redelivered_event_changes_nothing_and_is_counted():
    rng = np.random.default_rng(0)
    docs = [doc_message(f"d{i}", rng.normal(size=4)) for i in range(5)]
    events = [
        event_message(
            f"q{n}", rng.normal(size=4), [f"d{n % 5}", f"d{(n + 1) % 5}"], split, ts=100.0 + n
        )
        for n, split in enumerate(["train"] * 8 + ["validation"] * 4)
    ]
    gamma = {"every_events": 3, "every_seconds": 0, "min_improvement": 0.0}
    once, _ = run_engine(records(docs, events), {"gamma": gamma})
    # Every event twice, and a new pair of a known query (it counts, its first pair does not).
    twice = events + events[:6] + [event_message("q7", rng.normal(size=4), ["d3", "d8"], "train")]
    again, _ = run_engine(records(docs, twice), {"gamma": gamma})
    assert again.counts["duplicate_pairs"] == 12 + 1 and again.counts["duplicate_events"] == 6
    assert again.events == once.events + 1  # only the event with a new pair counts
    history = [s.events for s in again.selection_history][:-1]
    assert history == [s.events for s in once.selection_history][:-1]
    ids, a = once.adjusted()
    ids_b, b = again.adjusted()
    assert ids == ids_b and np.array_equal(a, b)
    base = sums_by_id(once)
    deduped = sums_by_id(again)
    # The new pair's document (d8) is not in the corpus: the sums are the first run's.
    assert all(np.array_equal(deduped[i], base[i]) for i in base)
    # Off: the repeats count again and move the sums.
    off, _ = run_engine(records(docs, twice), {"gamma": gamma, "queries": {"dedupe": False}})
    moved = sums_by_id(off)
    assert off.counts["duplicate_pairs"] == 0
    assert not all(np.array_equal(moved[i], base[i]) for i in base)


def test_the_latest_half_of_the_bound_is_always_remembered_and_memory_stays_bounded():
    engine = Engine(load_config(overrides={"queries": {"remember": 10}}))
    engine.process([Record("docs", doc_message("d", [1.0, 0.0]))])

    def click(n):
        return Record("events", event_message(f"q{n}", [0.0, 1.0], "d", "train"))

    for n in range(100):
        engine.process([click(n)])  # one batch per event: the bound is kept between batches
        assert len(engine.queries) <= 10 + 1
        # The latest 5 queries (this one included) are remembered: their re-delivery is dropped.
        before = engine.events
        engine.process([click(m) for m in range(max(0, n - 4), n + 1)])
        assert engine.events == before
    # Long forgotten: counts again (the bound is the documented trade).
    before = engine.events
    engine.process([click(0)])
    assert engine.events == before + 1


def test_the_memory_survives_a_checkpoint():
    engine = Engine(load_config())
    engine.process(
        [
            Record("docs", doc_message("d", [1.0, 0.0])),
            Record("events", event_message("q", [0.0, 1.0], "d", "train")),
        ]
    )
    again = restore(engine.params, *snapshot(engine))
    assert again.queries.get("q") == ("train", ("d",))
    out = again.process([Record("events", event_message("q", [0.0, 1.0], "d", "train"))])
    assert again.events == engine.events and again.counts["duplicate_events"] == 1
    assert out.dead_letters == []


def test_a_bad_bound_names_its_key():
    with pytest.raises(ConfigError, match=r"queries\.remember"):
        load_config(overrides={"queries": {"remember": 1}})
