"""fine_tune end to end: the API, its errors, degenerate input, and the published figures."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracles import plain_objective
from streams import fine_tune_on

from stream_nudge import fine_tune
from stream_nudge.core.finetune import build_scores
from stream_nudge.core.geometry import unit_rows
from stream_nudge.core.objectives import parse_objective
from stream_nudge.core.selection import select_gamma
from stream_nudge.metrics import retrieval_metrics

METHODS = ["nudge-m", "nudge-n"]


def random_problem(seed, n_docs=60, dim=8, n_train=40, n_val=15):
    rng = np.random.default_rng(seed)
    docs = rng.normal(size=(n_docs, dim)).astype(np.float32)
    train_ans = [
        list(rng.choice(n_docs, size=rng.integers(1, 3), replace=False)) for _ in range(n_train)
    ]
    # Queries near their answers, so that nudging has something to gain.
    train = np.stack([docs[a].mean(0) + rng.normal(scale=1.0, size=dim) for a in train_ans]).astype(
        np.float32
    )
    val_ans = [
        list(rng.choice(n_docs, size=rng.integers(1, 3), replace=False)) for _ in range(n_val)
    ]
    val = np.stack([docs[a].mean(0) + rng.normal(scale=1.0, size=dim) for a in val_ans]).astype(
        np.float32
    )
    return docs, train, train_ans, val, val_ans


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 10_000), st.sampled_from(METHODS), st.sampled_from(["hit@1", "mrr@5", "ndcg@5"])
)
def test_reported_validation_is_the_plain_metric_and_no_grid_point_beats_it(
    seed, method, objective
):
    docs, train, train_ans, val, val_ans = random_problem(seed)
    obj = parse_objective(objective)
    result = fine_tune(docs, train, train_ans, val, val_ans, method=method, objective=objective)
    after = plain_objective(result.embeddings, val, val_ans, obj.kind, obj.k)
    assert abs(result.validation.after - after) < 1e-9
    base = plain_objective(unit_rows(docs)[0], val, val_ans, obj.kind, obj.k)
    assert abs(result.validation.before - base) < 1e-9
    grid = [0.02 * i for i in range(25)] + (
        [0.75, 1.0, 2.0, 5.0] if method == "nudge-m" else [1.0, 1.5]
    )
    for gamma in grid:
        fixed = fine_tune(
            docs, train, train_ans, val, val_ans, method=method, objective=objective, gamma=gamma
        )
        assert plain_objective(fixed.embeddings, val, val_ans, obj.kind, obj.k) <= after + 1e-9


@pytest.mark.parametrize("method", METHODS)
def test_untouched_documents_never_move_and_rows_are_unit_for_n(method):
    docs, train, train_ans, _val, _val_ans = random_problem(1)
    # Validated on training queries, which the nudge serves: a positive gamma, so that the
    # untouched documents' staying put means something (random validation queries would have
    # 0 among the best, and 0 moves nothing).
    result = fine_tune(docs, train, train_ans, train[:15], train_ans[:15], method=method)
    touched = sorted({a for ans in train_ans for a in ans})
    untouched = np.setdiff1d(np.arange(len(docs)), touched)
    assert np.array_equal(result.embeddings[untouched], unit_rows(docs)[0][untouched])
    assert result.nudged == len(touched)
    assert result.gamma > 0
    if method == "nudge-n":
        assert np.allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_a_weight_of_two_is_the_query_given_twice(method):
    docs, train, train_ans, val, val_ans = random_problem(2)
    weights = np.ones(len(train))
    weights[::3] = 2.0
    weighted = fine_tune(docs, train, train_ans, val, val_ans, method=method, train_weights=weights)
    twice = np.concatenate([train, train[::3]])
    doubled = fine_tune(docs, twice, train_ans + train_ans[::3], val, val_ans, method=method)
    assert weighted.gamma == pytest.approx(doubled.gamma, rel=1e-6)
    np.testing.assert_allclose(weighted.embeddings, doubled.embeddings, atol=1e-6)


def test_precomputed_others_give_the_same_selection():
    docs, _train, train_ans, val, val_ans = random_problem(3, n_docs=300)
    d, _ = unit_rows(docs)
    v, _ = unit_rows(val)
    ptr = np.concatenate([[0], np.cumsum([len(a) for a in val_ans])])
    rows = np.concatenate([np.unique(a) for a in val_ans])
    nudged = np.unique(np.concatenate(train_ans))
    g, _ = unit_rows(np.random.default_rng(0).normal(size=(len(nudged), docs.shape[1])))
    obj = parse_objective("hit@3")
    full = build_scores(v, d, nudged, g, ptr, rows, 3)
    given_others = build_scores(v, d, nudged, g, ptr, rows, 3, others=full.others.copy())
    assert select_gamma(full, obj, "nudge-m") == select_gamma(given_others, obj, "nudge-m")
    # The pass really left out nudged documents and the query's own answers.
    scores = v @ d.T
    for q in range(len(v)):
        mask = np.ones(len(d), bool)
        mask[nudged] = False
        mask[rows[ptr[q] : ptr[q + 1]]] = False
        assert np.allclose(np.sort(full.others[q]), np.sort(scores[q][mask])[-3:])


# --- degenerate input: always well-defined, never NaN -----------------------------------------


def degenerate_cases():
    one = np.array([[1.0, 0.0]])
    cases = {
        "zero training query": (one, np.zeros((1, 2)), [[0]], np.array([[1.0, 1.0]]), [[0]]),
        "pull parallel to doc": (one, np.array([[3.0, 0.0]]), [[0]], np.array([[1.0, 1.0]]), [[0]]),
        "pull antiparallel": (one, np.array([[-3.0, 0.0]]), [[0]], np.array([[1.0, 1.0]]), [[0]]),
        "duplicate documents": (
            np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
            np.array([[0.0, 1.0], [1.0, 1.0]]),
            [[0], [1]],
            np.array([[0.2, 1.0]]),
            [[1]],
        ),
        "dimension one": (
            np.array([[1.0], [-2.0]]),
            np.array([[-1.0], [5.0]]),
            [[0], [1]],
            np.array([[1.0]]),
            [[1]],
        ),
        "float32 extremes": (
            np.array([[3e38, 1e-38], [1e-45, -3e38]], dtype=np.float32),
            np.array([[3e38, 3e38], [-3e38, 1e-40]], dtype=np.float32),
            [[0, 1], [1]],
            np.array([[3e38, -3e38]], dtype=np.float32),
            [[1]],
        ),
        "zero validation query": (one, np.array([[0.0, 1.0]]), [[0]], np.zeros((1, 2)), [[0]]),
        "empty training set": (one, np.zeros((0, 2)), [], np.array([[1.0, 0.0]]), [[0]]),
        "one document": (one, np.array([[0.5, 0.5]]), [[0]], np.array([[0.0, 1.0]]), [[0]]),
    }
    return cases


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", list(degenerate_cases()))
@pytest.mark.parametrize("objective", ["hit@1", "mrr", "ndcg@3"])
def test_degenerate_input_is_well_defined(case, method, objective):
    docs, train, train_ans, val, val_ans = degenerate_cases()[case]
    result = fine_tune(docs, train, train_ans, val, val_ans, method=method, objective=objective)
    assert result.embeddings.shape == np.asarray(docs).shape
    assert result.embeddings.dtype == np.float32
    assert np.all(np.isfinite(result.embeddings))
    assert np.isfinite(result.gamma) and result.gamma >= 0
    assert 0.0 <= result.validation.before <= 1.0 and 0.0 <= result.validation.after <= 1.0
    if method == "nudge-n":
        assert result.gamma < 2
        assert np.allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_empty_validation_set_gives_gamma_zero_and_a_warning(method):
    docs = np.eye(3)
    with pytest.warns(UserWarning, match="no validation query"):
        result = fine_tune(
            docs, np.array([[0.0, 1.0, 0.0]]), [[0]], np.zeros((0, 3)), [], method=method
        )
    assert result.gamma == 0.0
    assert np.array_equal(result.embeddings, np.eye(3, dtype=np.float32))


def test_validation_queries_without_answers_are_ignored():
    docs, train, train_ans, val, val_ans = random_problem(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = fine_tune(docs, train, train_ans, val, val_ans)
        b = fine_tune(docs, train, train_ans, np.concatenate([val, val[:2]]), [*val_ans, [], []])
    assert a.gamma == b.gamma and a.validation == b.validation


# --- bad arguments: ValueError naming the argument --------------------------------------------


def bad_calls():
    docs = np.eye(3)
    q = np.array([[1.0, 0.0, 0.0]])
    good = dict(
        doc_embeddings=docs, train_queries=q, train_answers=[[0]], val_queries=q, val_answers=[[1]]
    )
    nan = q.copy()
    nan[0, 1] = np.nan
    inf_docs = docs.copy()
    inf_docs[1, 1] = np.inf
    return [
        ("train_queries", dict(train_queries=np.ones((1, 4)))),
        ("val_queries", dict(val_queries=np.ones((1, 2)))),
        ("train_answers", dict(train_answers=[[3]])),
        ("val_answers", dict(val_answers=[[-1]])),
        ("train_answers", dict(train_answers=[[0], [1]])),
        ("val_answers", dict(val_answers=[["x"]])),
        ("train_queries", dict(train_queries=nan)),
        ("val_queries", dict(val_queries=nan)),
        ("doc_embeddings", dict(doc_embeddings=inf_docs)),
        ("doc_embeddings", dict(doc_embeddings=np.zeros((3, 3)))),
        ("doc_embeddings", dict(doc_embeddings=np.ones(3))),
        ("method", dict(method="nudge-x")),
        ("objective", dict(objective="precision@3")),
        ("objective", dict(objective="hit@0")),
        ("gamma", dict(gamma=-0.1)),
        ("gamma", dict(gamma=float("nan"))),
        ("gamma", dict(gamma=2.0, method="nudge-n")),
        ("max_gamma", dict(max_gamma=-1.0)),
        ("train_weights", dict(train_weights=[1.0, 2.0])),
        ("train_weights", dict(train_weights=[float("inf")])),
    ], good


@pytest.mark.parametrize("index", range(len(bad_calls()[0])))
def test_bad_arguments_raise_value_error_naming_the_argument(index):
    cases, good = bad_calls()
    name, change = cases[index]
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        fine_tune(**{**good, **change})


# --- parity with the published reference on real data -----------------------------------------


def load(shared_data, name):
    z = np.load(shared_data / name / "embeddings.npz")
    reference = json.loads((shared_data / name / "reference.json").read_text())
    relevance = [dict() for _ in range(len(z["query_emb"]))]
    for q, d, grade in z["qrels"]:
        relevance[q][int(d)] = float(grade)
    split = {s: np.flatnonzero(z["split"] == s) for s in (0, 1, 2)}
    return z["doc_emb"], z["query_emb"], relevance, split, reference


@pytest.mark.parametrize("name", ["scifact-minilm", "cranfield-minilm"])
@pytest.mark.parametrize("method", METHODS)
def test_parity_with_the_reference_on_real_data(shared_data, name, method):
    docs, queries, relevance, split, reference = load(shared_data, name)
    answers = [sorted(r) for r in relevance]
    test = split[2]
    result = fine_tune_on(docs, queries, answers, split[0], split[1], method)
    assert np.all(np.isfinite(result.embeddings))
    ours = retrieval_metrics(result.embeddings, queries[test], [relevance[i] for i in test])
    theirs = reference["reference_" + method.replace("-", "_")]
    # Shown with `pytest -s`: the figures the README and the notes quote.
    print(f"\n{name} {method}: ours {ours}, reference {theirs}")
    for metric in ("NDCG@10", "R@10"):
        assert ours[metric] >= theirs[metric] - 0.5, (metric, ours, theirs)
    base = retrieval_metrics(unit_rows(docs)[0], queries[test], [relevance[i] for i in test])
    for metric in ("R@1", "R@10", "NDCG@10"):
        assert base[metric] == pytest.approx(reference["no_ft"][metric], abs=0.01)


@pytest.mark.parametrize("bad_at", [0, 1, 7, 19])
@pytest.mark.parametrize("bad", ["x", 1.5, None, True])
def test_a_bad_answer_list_is_named_where_it_is(bad_at, bad):
    docs, train, _, val, val_ans = random_problem(0, n_train=20)
    answers = [[0]] * 20
    answers[bad_at] = [bad] if bad_at % 2 else [1, bad]
    with pytest.raises(ValueError, match=rf"first bad list: train_answers\[{bad_at}\]"):
        fine_tune(docs, train, answers, val, val_ans)


@pytest.mark.parametrize("method", METHODS)
def test_no_training_query_means_gamma_zero_and_nothing_moves(method):
    docs, _, _, val, val_ans = random_problem(1)
    result = fine_tune(docs, np.zeros((0, docs.shape[1])), [], val, val_ans, method=method)
    assert result.gamma == 0.0 and result.nudged == 0
    assert np.allclose(result.embeddings, unit_rows(docs)[0], atol=1e-7)
    assert result.validation.after == result.validation.before


def test_a_negative_weight_pushes_a_document_away_from_its_query():
    docs = np.array([[1.0, 0.0], [0.0, 1.0]])
    train = np.array([[0.6, 0.8]])
    toward = fine_tune(docs, train, [[0]], train, [[0]], method="nudge-n", gamma=0.5)
    away = fine_tune(docs, train, [[0]], train, [[0]], "nudge-n", train_weights=[-1.0], gamma=0.5)
    assert toward.embeddings[0] @ train[0] > 0.6 > away.embeddings[0] @ train[0]
