"""Drift: query sums with exponentially decaying clicks, against a brute-force discounted sum."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from streams import doc_message, event_message, records, run_engine
from test_engine_behaviour import toy

from stream_nudge.config import ConfigError, load_config
from stream_nudge.engine.slots import Decay

DIM = 4


def aged_sums(engine, now):
    """Every clicked document's sum expressed at time ``now`` (its stamp may be older)."""
    docs, decay = engine.docs, engine.docs.decay
    origin = engine.first_clock if engine.first_clock is not None else np.nan
    out = {}
    for doc_id, row in docs.row_of.items():
        slot = docs.slot_of[row]
        if slot >= 0:
            stamp = docs.slots.stamps[slot].copy()
            if np.isnan(stamp[1]):
                stamp[1] = origin
            factor = decay.factors(np.array([now[0] - stamp[0]]), np.array([now[1] - stamp[1]]))[0]
            out[doc_id] = docs.slots.sums[slot] * factor
    return out


def brute_force(clicks, decay, now):
    """sum of w * q * 2^-(age in half-lives), click by click."""
    out = {}
    for doc_id, q, w, (e, s) in clicks:
        f = decay.factors(np.array([now[0] - e]), np.array([now[1] - s]))[0]
        out[doc_id] = out.get(doc_id, np.zeros(DIM)) + w * f * np.asarray(q, np.float64)
    return out


click_lists = st.lists(
    st.tuples(
        st.integers(0, 5),  # document
        st.lists(st.floats(-2, 2, width=32), min_size=DIM, max_size=DIM),
        st.sampled_from([0.5, 1.0, 2.0]),  # weight
        st.floats(0, 30),  # seconds since the previous event
        st.booleans(),  # whether the event says its time
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=80, deadline=None)
@given(
    clicks=click_lists,
    batch=st.integers(1, 50),
    late=st.integers(0, 40),
    half_lives=st.sampled_from([(3.0, None), (None, 25.0), (7.0, 40.0)]),
)
def test_decayed_sums_equal_the_brute_force_discount(clicks, batch, late, half_lives):
    """Any batching, documents arriving after some of their clicks (pending), and events without
    a time give the sum of every click discounted by its own age, in events and in seconds. An
    event without a time happens at the latest time seen, or, before any, at the first one."""
    h_events, h_seconds = half_lives
    rng = np.random.default_rng(len(clicks))
    doc_vecs = rng.normal(size=(6, DIM))
    doc_msgs = [doc_message(f"d{i}", doc_vecs[i]) for i in range(6)]
    events, seen, t, clock = [], [], 1000.0, None
    for n, (doc, q, w, gap, timed) in enumerate(clicks):
        t += gap
        if timed:
            clock = t
        events.append(
            event_message(f"q{n}", q, f"d{doc}", "train", weight=w, ts=t if timed else None)
        )
        seen.append([f"d{doc}", q, w, [float(n + 1), clock]])
    first = next((c[3][1] for c in seen if c[3][1] is not None), np.nan)
    for click in seen:
        click[3][1] = first if click[3][1] is None else click[3][1]
    # Documents 0-2 come first, documents 3-5 after `late` events: their clicks wait.
    recs = records(doc_msgs[:3], events[:late]) + records(doc_msgs[3:], events[late:])
    overrides = {"decay": {"half_life_events": h_events, "half_life_seconds": h_seconds}}
    engine, _ = run_engine(recs, overrides, batch)
    now = (float(len(clicks)), clock if clock is not None else np.nan)
    got = aged_sums(engine, now)
    want = brute_force(seen, Decay(h_events, h_seconds), now)
    assert set(want) <= set(got)
    for doc_id, g in want.items():
        np.testing.assert_allclose(got[doc_id], g, rtol=1e-9, atol=1e-12)


def test_without_decay_the_sums_are_plain_sums():
    doc_msgs, events = toy()
    plain, _ = run_engine(records(doc_msgs, events))
    slow, _ = run_engine(records(doc_msgs, events), {"decay": {"half_life_events": 1e12}})
    for row in range(plain.docs.n_rows):
        a, b = plain.docs.slot_of[row], slow.docs.slot_of[row]
        if a >= 0:
            np.testing.assert_allclose(plain.docs.slots.sums[a], slow.docs.slots.sums[b], rtol=1e-9)


def test_decay_turns_a_document_toward_its_recent_clicks():
    """Old clicks pull one way, recent ones another: with a short half-life the published
    direction follows the recent clicks; without decay it sits between."""
    doc = doc_message("d0", [1.0, 0.0, 0.0, 0.0])
    old = [event_message(f"a{i}", [0.0, 1.0, 0.0, 0.0], "d0", "train") for i in range(50)]
    new = [event_message(f"b{i}", [0.0, 0.0, 1.0, 0.0], "d0", "train") for i in range(50)]
    recs = records([doc], old + new)
    plain, _ = run_engine(recs)
    decayed, _ = run_engine(recs, {"decay": {"half_life_events": 5.0}})
    g_plain = plain.docs.directions(np.array([0]))[0]
    g_decayed = decayed.docs.directions(np.array([0]))[0]
    np.testing.assert_allclose(g_plain, [0, 2**-0.5, 2**-0.5, 0], atol=1e-12)
    # 50 old clicks aged 50..99 events against 50 new ones aged 0..49 at half-life 5: 2^-10 less.
    assert g_decayed[2] > 0.999 and 0 < g_decayed[1] < 2e-3


def test_a_folded_validation_query_ages_from_its_arrival():
    """A query that leaves the window joins the training sums discounted by its age."""
    doc = doc_message("d0", [1.0, 0.0, 0.0, 0.0])
    recs = records(
        [doc],
        [event_message("v", [0.0, 1.0, 0.0, 0.0], "d0", "validation")]
        + [event_message(f"w{i}", [0.0, 0.0, 0.0, 1.0], "d1", "validation") for i in range(3)]
        + [event_message("t", [0.0, 0.0, 1.0, 0.0], "d0", "train")],
    )
    engine, _ = run_engine(recs, {"validation": {"window": 1}, "decay": {"half_life_events": 2.0}})
    # "v" arrived at event 1, left the window at event 2; "t" is event 5. At event 5 they weigh
    # 2^-2 and 1.
    got = aged_sums(engine, (5.0, np.nan))["d0"]
    np.testing.assert_allclose(got, [0.0, 0.25, 1.0, 0.0], atol=1e-12)


def test_bad_half_lives_name_the_key():
    for key in ("half_life_events", "half_life_seconds"):
        for value in (0, -1.0, float("inf")):
            try:
                load_config(overrides={"decay": {key: value}})
            except ConfigError as exc:
                assert f"decay.{key}" in str(exc)
            else:
                raise AssertionError(f"decay.{key} = {value} was accepted")


def test_a_checkpoint_from_before_decay_restores_without_nan():
    """Checkpoints written before decay existed hold no click times: their sums, window queries
    and waiting clicks count as of the restore, and nothing becomes NaN when they age later."""
    from stream_nudge.engine import Engine, restore, snapshot
    from stream_nudge.messages import Record

    config = load_config(
        overrides={"validation": {"window": 2}, "decay": {"half_life_events": 4.0}}
    )
    doc_msgs, events = toy()
    engine = Engine(config)
    engine.process(records(doc_msgs[:20], events[:40]))
    engine.process([Record("events", event_message("late", np.ones(8), "d25", "train"))])
    arrays, meta = snapshot(engine)
    for name in ("stamps", "window_born", "pending_times"):
        del arrays[name]
    del meta["first_clock"]
    old = restore(config, arrays, meta)
    assert np.isfinite(old.window.born[old.window.active_slots()]).all()
    old.process(records(doc_msgs[20:], events[40:]))
    old.finish()
    assert np.isfinite(old.docs.slots.sums[: old.docs.slots.used]).all()
    assert old.counts["folded_queries"] > 0 and old.docs.slots.sums[: old.docs.slots.used].any()
