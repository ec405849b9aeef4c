"""Clicks waiting for their document: applied when it comes, dropped when it is deleted, expired
after a configured age, reported (or dead-lettered) at the end of a replay, bounded in number."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import examples
from streams import delete_message, doc_message, event_message, records, run_engine, write_jsonl

from stream_nudge.app import replay
from stream_nudge.config import load_config
from stream_nudge.engine import Engine
from stream_nudge.engine.pending import PendingClicks
from stream_nudge.messages import Record

operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from("abc"), st.integers(0, 3)),
        st.tuples(st.just("take"), st.sampled_from("abc")),
        st.tuples(st.just("drop"), st.sampled_from("abc")),
        st.tuples(st.just("expire"), st.integers(0, 3)),
    ),
    max_size=60,
)


@settings(max_examples=examples(100), deadline=None)
@given(operations, st.integers(0, 8), st.sampled_from([None, 2.0, 5.0]))
def test_the_store_against_a_list_of_every_waiting_click(ops, capacity, max_age):
    store = PendingClicks(capacity, max_age_events=max_age)
    alive: list[tuple[str, int, int]] = []  # (document, arrival event, number): the oracle
    now = 0
    for n, op in enumerate(ops):
        if op[0] == "add":
            now += op[2]  # event counts only grow
            ok = store.add(op[1], f"q{n}", np.full(2, n), 1.0, (np.nan, np.nan), (now, np.nan))
            assert ok == (len(alive) < capacity)
            if ok:
                alive.append((op[1], now, n))
        elif op[0] in ("take", "drop"):
            got = store.take(op[1]) if op[0] == "take" else store.drop(op[1])
            mine = [c for c in alive if c[0] == op[1]]
            alive = [c for c in alive if c[0] != op[1]]
            if op[0] == "take":
                assert [w.query_id for w in got] == [f"q{c[2]}" for c in mine]
            else:
                assert got == len(mine)
        else:
            now += op[1]
            expired = store.expire(now, None)
            old = [c for c in alive if max_age is not None and now - c[1] > max_age]
            alive = [c for c in alive if c not in old]
            assert [(d, w.query_id) for d, w in expired] == [(c[0], f"q{c[2]}") for c in old]
        assert len(store) == len(alive)
        assert store.documents == len({c[0] for c in alive})
    assert [(d, w.query_id) for d, w in store.drain()] == [(c[0], f"q{c[2]}") for c in alive]
    assert len(store) == 0


def _vec(i):
    return np.array([1.0, 0.1 * i, 0.0, 0.5])


def test_a_delete_drops_the_clicks_waiting_for_that_document():
    events = [event_message(f"q{i}", _vec(i), "late", "train") for i in range(3)]
    docs = [doc_message("a", _vec(9))]
    recs = records(docs, events) + [
        Record("docs", delete_message("late")),
        Record("docs", doc_message("late", _vec(5))),
    ]
    engine, _ = run_engine(recs, {"gamma": {"every_events": 0, "every_seconds": 0}})
    assert engine.pending_count == 0 and engine.counts["pending_dropped_deleted"] == 3
    # The document that came after its delete starts with no clicks: it is not nudged.
    assert len(engine.docs.nudged_rows()) == 0


def test_waiting_clicks_expire_by_events_as_dead_letters_that_can_be_sent_again():
    config = load_config(overrides={"pending": {"max_age_events": 3}})
    engine = Engine(config)
    engine.process([Record("docs", doc_message("a", _vec(9)))])
    waiting = event_message("q-w", _vec(1), "never", "train", weight=2.0)
    out = engine.process([Record("events", waiting)])
    assert engine.pending_count == 1 and out.dead_letters == []
    fillers = [Record("events", event_message(f"f{i}", _vec(i), "a", "train")) for i in range(4)]
    out = engine.process(fillers)
    assert engine.pending_count == 0
    [letter] = out.dead_letters
    assert letter.reason == "pending_expired" and "'never'" in letter.detail
    # The dead letter is the event itself, in the contract's form.
    again = orjson.loads(letter.record.value)
    sent = orjson.loads(waiting)
    assert again["query_id"] == "q-w" and again["doc_id"] == "never" and again["weight"] == 2.0
    assert np.allclose(again["query_embedding"], sent["query_embedding"])
    assert engine.dead_letters["pending_expired"] == 1


def test_waiting_clicks_expire_by_event_time():
    config = load_config(overrides={"pending": {"max_age_seconds": 60}})
    engine = Engine(config)
    engine.process([Record("docs", doc_message("a", _vec(9)))])
    engine.process([Record("events", event_message("q", _vec(1), "never", "train", ts=1000.0))])
    engine.process([Record("events", event_message("r", _vec(2), "a", "train", ts=1059.0))])
    assert engine.pending_count == 1
    out = engine.process([Record("events", event_message("s", _vec(3), "a", "train", ts=1061.0))])
    assert [d.reason for d in out.dead_letters] == ["pending_expired"]


@pytest.mark.parametrize("dead_letter_at_end", [False, True])
def test_a_replay_reports_what_still_waits_and_dead_letters_it_when_asked(
    tmp_path, dead_letter_at_end
):
    docs = write_jsonl(tmp_path / "d.jsonl", [doc_message("a", _vec(9))])
    events = write_jsonl(
        tmp_path / "e.jsonl",
        [event_message(f"q{i}", _vec(i), ["x", "y"][i % 2], "train") for i in range(5)],
    )
    config = load_config(overrides={"pending": {"dead_letter_at_end": dead_letter_at_end}})
    summary = replay(config, docs, events, tmp_path / "u.jsonl", progress=False)
    dead = (tmp_path / "u.jsonl.dead-letters.jsonl").read_bytes().splitlines()
    if dead_letter_at_end:
        assert summary.pending == 0 and summary.dead_letters == {"pending_at_end": 5}
        reasons = [orjson.loads(line)["reason"] for line in dead]
        assert reasons == ["pending_at_end"] * 5
    else:
        assert summary.pending == 5 and summary.pending_documents == 2 and dead == []
        assert any("5 clicks still wait for 2 documents" in line for line in summary.lines())


def test_a_folded_validation_click_waits_from_the_event_that_folded_it():
    """A validation query evicted from the window becomes training clicks; one on a document not
    seen yet waits, and its age counts from the event that evicted the query, as a training
    click's does from its own event (not from the start of the batch)."""
    rng = np.random.default_rng(0)
    config = load_config(
        overrides={
            "validation": {"window": 1, "fold_evicted": True},
            "gamma": {"every_events": 0, "every_seconds": 0},
        }
    )
    engine = Engine(config)
    events = [event_message("v1", rng.normal(size=2), "x", "validation")]
    events += [event_message(f"t{i}", rng.normal(size=2), "a", "train") for i in range(5)]
    events.append(event_message("v2", rng.normal(size=2), "a", "validation"))  # evicts v1
    engine.process(records([doc_message("a", [1.0, 0.0])], events))
    assert engine.counts["folded_queries"] == 1
    (waiting,) = engine.pending.by_doc["x"]
    assert waiting.query_id == "v1" and waiting.born[0] == 7.0
