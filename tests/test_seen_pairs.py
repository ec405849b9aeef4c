"""Re-delivered events: a (query id, document id) pair counts once, within a memory bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streams import doc_message, event_message, records, run_engine

from stream_nudge.config import ConfigError, load_config
from stream_nudge.engine.seen import SeenPairs, pair_key

pairs = st.lists(
    st.tuples(
        st.sampled_from(["q1", "q2", "q:x", "é", "\ud800"]),
        st.lists(st.sampled_from("abcde"), min_size=1, max_size=3, unique=True).map(tuple),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(pairs, st.integers(2, 40))
def test_fresh_pairs_are_the_first_occurrences_within_the_bound(events, capacity):
    seen = SeenPairs(capacity)
    remembered: set[tuple[str, str]] = set()
    for query_id, doc_ids in events:
        got = seen.fresh(query_id, doc_ids)
        # Oracle, while the distinct pairs fit in half the capacity: every pair ever seen.
        expected = []
        for d in doc_ids:
            if (query_id, d) not in remembered and d not in expected:
                expected.append(d)
        if len(remembered | {(query_id, d) for d in doc_ids}) <= capacity // 2:
            assert list(got) == expected
        else:
            # Beyond it only the bound holds: what is reported is new to this event.
            assert len(set(got)) == len(got) and set(got) <= set(doc_ids)
        remembered.update((query_id, d) for d in got)
        assert len(seen) <= capacity


def test_the_latest_half_of_the_capacity_is_always_remembered():
    seen = SeenPairs(10)
    for n in range(100):
        assert seen.fresh(f"q{n}", ("d",)) == ("d",)
        # The latest 5 distinct pairs (this one included) are duplicates now.
        for back in range(5):
            if n - back >= 0:
                assert seen.fresh(f"q{n - back}", ("d",)) == ()
    assert len(seen) <= 10


def test_keys_are_stable_and_the_state_round_trips():
    # The same key in every process and release: checkpoints hold keys, not pairs.
    assert pair_key("q-9", "doc-17") == bytes.fromhex("e5b33bb4ee7662ec")
    assert pair_key("q-9", "doc-17") != pair_key("q-9", "doc-1")
    # Ids are any text: where one ends and the other begins is part of the key.
    assert pair_key("a:", "b") != pair_key("a", ":b")
    assert pair_key("ab", "c") != pair_key("a", "bc")
    seen = SeenPairs(8)
    seen.fresh("q", ("a", "b", "c", "d", "e"))
    back = SeenPairs.from_state(8, seen.to_state())
    assert back.current == seen.current and back.previous == seen.previous
    assert back.fresh("q", ("a", "e", "f")) == ("f",)


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
    # Every event twice, one of them split into its pairs, and a pair of a two-answer event alone.
    twice = events + events[:6] + [event_message("q7", rng.normal(size=4), "d8", "train")]
    again, _ = run_engine(records(docs, twice), {"gamma": gamma})
    assert again.counts["duplicate_pairs"] == 12
    assert again.events == once.events + 1  # only the new pair (q7, d8) counts
    assert [s.events for s in again.selection_history][:-1] == [
        s.events for s in once.selection_history
    ][:-1]
    ids, a = once.adjusted()
    ids_b, b = again.adjusted()
    assert ids == ids_b and np.array_equal(a, b)
    # Off: the repeats count again and move the sums.
    off, _ = run_engine(records(docs, twice), {"gamma": gamma, "dedupe": {"max_pairs": 0}})
    assert off.counts["duplicate_pairs"] == 0 and not np.array_equal(off.adjusted()[1], a)


@pytest.mark.parametrize("bad", [-1, 1])
def test_a_bad_bound_names_its_key(bad):
    with pytest.raises(ConfigError, match=r"dedupe\.max_pairs"):
        load_config(overrides={"dedupe": {"max_pairs": bad}})
