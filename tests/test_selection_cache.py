"""The selection cache against a selection from scratch, on every selection of random streams.

An engine is driven through random sequences of document upserts and deletes, training clicks
(which move query sums, and with negative weights can cancel them), validation clicks (new
queries, new answers of known queries, evictions) and re-selections. Before each re-selection a
copy of the engine forgets its cache; both then select, and what they report and publish must be
the same up to the rounding of the score products (see ``rounding.py``): the same values, the
same best region, the same documents published with the same generations, embeddings within
what the difference of gamma moves them.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rounding import VALUE_TOLERANCE, assert_same_region, embedding_bound
from strategies import examples
from streams import delete_message, doc_message, event_message

from stream_nudge.config import load_config
from stream_nudge.engine import Engine
from stream_nudge.engine.engine import restore, snapshot
from stream_nudge.engine.scores import SelectionCache
from stream_nudge.messages import Record, encode_output

SETTINGS = settings(
    max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

N_DOC_IDS = 8
N_QUERY_IDS = 10


@st.composite
def streams(draw):
    dim = draw(st.integers(1, 4))
    lattice = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def vector():
        if lattice:
            # Small integers: exact ties, parallel and opposite sums come up often.
            v = rng.integers(-2, 3, size=dim).astype(np.float64)
            if not v.any():
                v[0] = 1.0
            return v
        return rng.normal(size=dim)

    ops = []
    # Some documents first, so that most streams have something to nudge.
    for i in range(draw(st.integers(1, N_DOC_IDS))):
        ops.append(("doc", f"d{i}", vector()))
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(
            st.sampled_from(["doc", "delete", "train", "train", "val", "val", "select", "select"])
        )
        doc = f"d{draw(st.integers(0, N_DOC_IDS - 1))}"
        if kind == "doc":
            ops.append(("doc", doc, vector()))
        elif kind == "delete":
            ops.append(("delete", doc))
        elif kind == "train":
            weight = draw(st.sampled_from([1.0, 1.0, 2.0, -1.0]))
            ops.append(("train", vector(), doc, weight))
        elif kind == "val":
            query = f"v{draw(st.integers(0, N_QUERY_IDS - 1))}"
            ops.append(("val", query, vector(), doc))
        else:
            ops.append(("select",))
    ops.append(("select",))
    return ops


def _record(op, n: int) -> Record:
    kind = op[0]
    if kind == "doc":
        return Record("docs", doc_message(op[1], op[2]))
    if kind == "delete":
        return Record("docs", delete_message(op[1]))
    if kind == "train":
        return Record("events", event_message(f"t{n}", op[1], op[2], "train", op[3]))
    return Record("events", event_message(op[1], op[2], op[3], "validation"))


def assert_same_reports(got, expected) -> None:
    """Selection reports equal up to rounding (see the module docstring)."""
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert (a.queries, a.nudged, a.events, a.changed) == (
            b.queries,
            b.nudged,
            b.events,
            b.changed,
        )
        for name in ("value_before", "value_current", "value_after"):
            assert getattr(a, name) == pytest.approx(getattr(b, name), abs=VALUE_TOLERANCE), name
        assert_same_region((a.candidate, a.low, a.high), (b.candidate, b.low, b.high))


def assert_same_messages(got, expected, method: str, gamma_a: float, gamma_b: float) -> None:
    """The same documents published in the same order with the same generations; embeddings
    within what the two gammas move them apart."""
    assert [(k, g) for k, _, _, g in got] == [(k, g) for k, _, _, g in expected]
    bound = embedding_bound(method, gamma_a, gamma_b)
    for (_, value_a, line_a, _), (_, value_b, line_b, _) in zip(got, expected, strict=True):
        assert (value_a is None) == (value_b is None)
        a, b = orjson.loads(line_a), orjson.loads(line_b)
        if "embedding" not in a:
            assert a == b
            continue
        assert np.abs(np.array(a.pop("embedding")) - np.array(b.pop("embedding"))).max() <= bound
        assert a.pop("gamma") == pytest.approx(b.pop("gamma"), abs=bound)
        assert a == b


def _drive(ops, overrides, test_reach: bool = True) -> int:
    """Run ``ops``; at each selection compare with a copy that starts from scratch. Returns the
    number of selections that had something to select on. With ``test_reach`` the cache tests
    every changed document's reach however many changed (it would recompute every query beyond
    a share of them, which with a handful of documents is nearly always)."""
    engine = Engine(load_config(overrides=overrides))
    batch: list[Record] = []
    compared = 0
    for n, op in enumerate(ops):
        if op[0] != "select":
            batch.append(_record(op, n))
            continue
        engine.process(batch)
        batch = []
        if test_reach and engine.selection_cache is not None:
            engine.selection_cache.all_columns = np.inf
        # A restored engine holds the same state and no caches: it selects from scratch.
        fresh = restore(engine.params, *snapshot(engine))
        got, expected = engine.reselect(), fresh.reselect()
        assert_same_reports(got.selections, expected.selections)
        method = engine.params.method
        assert_same_messages(
            encode_output(got.tombstones, got.updates),
            encode_output(expected.tombstones, expected.updates),
            method,
            engine.gamma,
            fresh.gamma,
        )
        compared += len(got.selections)
    return compared


@pytest.mark.parametrize("method", ["nudge-m", "nudge-n"])
@SETTINGS
@given(
    ops=streams(),
    window=st.integers(1, 6),
    objective=st.sampled_from(["hit@1", "hit@2", "mrr@3", "ndcg@3"]),
    fold=st.booleans(),
    test_reach=st.booleans(),
)
def test_every_cached_selection_equals_one_from_scratch(
    method, ops, window, objective, fold, test_reach
):
    overrides = {
        "method": method,
        "objective": objective,
        "validation": {"window": window, "fold_evicted": fold},
        "gamma": {"every_events": 0, "every_seconds": 0},
    }
    _drive(ops, overrides, test_reach)


@pytest.mark.parametrize("method", ["nudge-m", "nudge-n"])
def test_a_cache_over_its_limit_is_dropped_and_selections_stay_the_same(method):
    rng = np.random.default_rng(3)
    ops = [("doc", f"d{i}", rng.normal(size=4)) for i in range(N_DOC_IDS)]
    for n in range(30):
        ops.append(("train", rng.normal(size=4), f"d{n % 5}", 1.0))
        ops.append(("val", f"v{n % N_QUERY_IDS}", rng.normal(size=4), f"d{n % 7}"))
        if n % 5 == 4:
            ops.append(("select",))
    overrides = {
        "method": method,
        "gamma": {"every_events": 0, "every_seconds": 0},
        "validation": {"window": 4},
    }
    # limits.selection_cache_bytes: 0 keeps nothing between selections.
    small = Engine(load_config(overrides={**overrides, "limits": {"selection_cache_bytes": 0}}))
    kept = Engine(load_config(overrides=overrides))
    for engine in (small, kept):
        for n, op in enumerate(ops):
            if op[0] == "select":
                engine.reselect()
            else:
                engine.process([_record(op, n)])
    assert small.selection_cache.nbytes == 0
    assert kept.selection_cache.nbytes > 0
    assert_same_reports(small.selection_history, kept.selection_history)
    assert len(small.selection_history) == 6


def test_products_of_other_shapes_agree_within_the_float32_error_bound():
    # What the cache relies on, and all it may rely on: a product's rows or columns computed on
    # their own equal the same part of the whole product up to float32 rounding, bounded by
    # d * u * |v| |d| (u = 2**-24) for a dot product of length d. Bit-equality is not promised.
    rng = np.random.default_rng(0)
    v = rng.normal(size=(300, 64)).astype(np.float32)
    d = rng.normal(size=(500, 64)).astype(np.float32)
    whole = v @ d.T
    exact = v.astype(np.float64) @ d.astype(np.float64).T
    bound = 64 * 2.0**-24 * np.outer(np.linalg.norm(v, axis=1), np.linalg.norm(d, axis=1))
    assert np.all(np.abs(whole - exact) <= bound)
    for rows in (slice(0, 1), slice(7, 9), slice(100, 140)):
        assert np.all(np.abs(v[rows] @ d.T - exact[rows]) <= bound[rows])
    for cols in (slice(3, 4), slice(10, 13), slice(0, 77)):
        assert np.all(np.abs(v @ d[cols].T - exact[:, cols]) <= bound[:, cols])
    # A full refresh writes its product straight into the (wider) table.
    table = np.zeros((300, 600), dtype=np.float32)
    np.matmul(v, d.T, out=table[:, :500])
    assert np.all(np.abs(table[:, :500] - exact) <= bound)


@pytest.mark.parametrize("method", ["nudge-m", "nudge-n"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cached_selections_equal_fresh_ones_on_a_bigger_stream(method, seed):
    # Bigger than the property test: a window of 40 (whole-table products, queries whose curves
    # stay cached), 60 nudged documents of 300 (changes of a few columns tested for reach).
    rng = np.random.default_rng(seed)
    dim, n_docs = 16, 300
    docs = rng.normal(size=(n_docs, dim))
    ops = [("doc", f"d{i}", docs[i]) for i in range(n_docs)]
    clicked = rng.choice(n_docs, size=60, replace=False)

    def near(i):
        return docs[i] + 0.6 * rng.normal(size=dim)

    for i in clicked:
        ops.append(("train", near(i), f"d{i}", 1.0))
    n_queries = 0
    for round_ in range(8):
        for _ in range(12 if round_ == 0 else 5):
            target = int(rng.choice(clicked))
            ops.append(("val", f"v{n_queries}", near(target), f"d{target}"))
            n_queries += 1
        for _ in range(3):
            target = int(rng.choice(clicked))
            ops.append(("train", near(target), f"d{target}", float(rng.choice([1.0, -1.0]))))
        ops.append(("doc", f"d{rng.integers(n_docs)}", rng.normal(size=dim)))
        if round_ % 3 == 2:
            ops.append(("delete", f"d{rng.choice(clicked)}"))
        extra = int(rng.integers(n_queries))
        ops.append(("val", f"v{extra}", near(0), f"d{rng.choice(clicked)}"))
        ops.append(("select",))
    overrides = {
        "method": method,
        "objective": ["hit@1", "mrr@3", "ndcg@3"][seed],
        "validation": {"window": 40},
        "gamma": {"every_events": 0, "every_seconds": 0},
    }
    assert _drive(ops, overrides, test_reach=seed != 1) == 8


def test_cache_reports_its_memory():
    from stream_nudge.core.objectives import parse_objective

    cache = SelectionCache(2000, "nudge-n", parse_objective("hit@1"), None)
    assert cache.nbytes == 0


@pytest.mark.parametrize("method", ["nudge-m", "nudge-n"])
def test_a_query_away_from_a_selection_is_recomputed_when_it_comes_back(method):
    # q1 loses its only answer (x is deleted) while y moves toward it, and the selection that sees
    # y move runs without q1. When x comes back (same row, same vector), q1's inputs look as
    # before, but what y does to it is new: its curve must not be taken from the cache.
    ops = [
        ("doc", "x", np.array([1.0, 0.0])),
        ("doc", "z", np.array([0.0, 1.0])),
        ("doc", "y", np.array([0.6, -0.8])),
        ("train", np.array([0.0, -1.0]), "y", 1.0),
        ("train", np.array([0.0, 1.0]), "z", 1.0),
        ("val", "q1", np.array([1.0, 0.1]), "x"),
        ("val", "q2", np.array([0.1, 1.0]), "z"),
        ("select",),
        ("delete", "x"),
        ("train", np.array([1.0, 0.05]), "y", 50.0),
        ("select",),
        ("doc", "x", np.array([1.0, 0.0])),
        ("select",),
    ]
    overrides = {
        "method": method,
        "validation": {"window": 2},
        "gamma": {"every_events": 0, "every_seconds": 0},
    }
    assert _drive(ops, overrides) == 3
