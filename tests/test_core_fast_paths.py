"""The core's fast paths agree with the plain computation they replace."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_nudge.core.finetune import _segment_sums
from stream_nudge.core.geometry import gamma_to_theta
from stream_nudge.core.objectives import parse_objective
from stream_nudge.core.selection import (
    _CELLS,
    ValidationScores,
    _answer_curves,
    _best_region,
    _capped_counts,
    _crossings,
    _curve_at,
    _curve_events,
    _tolerance,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=12),
    dim=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_segment_sums_are_the_sums_of_each_segment(lengths, dim, seed):
    # Lengths up to 30 cover both the row-by-row steps and the reduceat tails past _DIRECT_ROWS.
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(sum(lengths), dim)) * 10.0 ** rng.integers(-3, 4, size=(sum(lengths), 1))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    before = x.copy()
    got = _segment_sums(x, starts)
    want = np.stack([x[s : s + n].sum(axis=0) for s, n in zip(starts, lengths, strict=True)])
    scale = np.stack(
        [np.abs(x[s : s + n]).sum(axis=0) for s, n in zip(starts, lengths, strict=True)]
    )
    assert np.all(np.abs(got - want) <= 1e-14 * scale)
    assert np.array_equal(x, before)  # the input is not written into


objectives_k = st.sampled_from(["hit@1", "hit@2", "mrr@3", "ndcg@3"])


@st.composite
def validation_scores(draw, max_nudged=6):
    """Random scores as fine_tune builds them, in float32 or float64, with exact ties forced."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    nq, nn = draw(st.integers(1, 6)), draw(st.integers(0, max_nudged))
    width = draw(st.integers(3, 5))
    # Values on a coarse grid half the time, so that competitors tie with answers exactly.
    grid = draw(st.booleans())

    def table(*shape):
        x = rng.uniform(-1.0, 1.0, size=shape)
        return (np.round(x * 4) / 4 if grid else x).astype(dtype)

    lengths = rng.integers(1, 4, size=nq)
    cols = np.where(
        rng.random(lengths.sum()) < 0.6, rng.integers(-1, max(nn, 1), lengths.sum()), -1
    )
    cols = np.where(cols < nn, cols, -1)
    others = table(nq, width)
    others[rng.random(others.shape) < 0.2] = -np.inf
    return ValidationScores(
        sims=table(nq, nn),
        pulls=table(nq, nn),
        answer_ptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        answer_cols=cols.astype(np.int64),
        answer_static=table(lengths.sum()),
        others=others,
        tangents=table(nq, nn),
        angles=rng.uniform(0.0, np.pi / 2, size=nn),
    )


def counts_pair_by_pair(scores, method, gamma, tol, dtype):
    """Every competitor against every answer, one pair at a time (no top-k shortcut)."""
    theta = float(gamma_to_theta(gamma)) if method == "nudge-n" else 0.0
    counts = []
    for p, q in enumerate(scores.pair_query):
        col = scores.answer_cols[p]
        if gamma == 0.0:
            comp = np.concatenate([scores.sims[q].astype(dtype), scores.others[q].astype(dtype)])
            answer = (scores.sims[q, col] if col >= 0 else scores.answer_static[p]).astype(dtype)
        else:
            moving = scores.sims[q].astype(np.float64) * np.cos(theta) + scores.tangents[q].astype(
                np.float64
            ) * np.sin(theta)
            turned = np.where(theta < scores.angles, moving, scores.pulls[q].astype(np.float64))
            comp = np.concatenate([turned, scores.others[q].astype(np.float64)])
            answer = _curve_at(_answer_curves(scores, np.array([p])), np.array([[theta]]))[0, 0]
        own = scores.answer_cols[scores.answer_ptr[q] : scores.answer_ptr[q + 1]]
        comp[own[own >= 0]] = -np.inf
        counts.append(int(np.sum(comp - answer >= -tol)))
    return np.array(counts, dtype=np.int64)


@SETTINGS
@given(
    validation_scores(),
    st.integers(1, 4),
    st.sampled_from(["nudge-m", "nudge-n"]),
    st.sampled_from([0.0, 1e-3, 0.3, 1.2, 1.9]),
)
def test_capped_counts_from_the_best_k_equal_counting_every_competitor(scores, k, method, gamma):
    if method == "nudge-m":
        gamma = 0.0  # NUDGE-M takes this path at gamma 0 only
    tol = _tolerance(scores.sims.dtype)
    dtype = np.result_type(scores.sims.dtype, np.float32)
    got = _capped_counts(scores, k, method, gamma, tol, dtype)
    want = np.minimum(counts_pair_by_pair(scores, method, gamma, tol, dtype), k)
    assert np.array_equal(got, want)


def unpruned_curve_events(scores, k, upper):
    """NUDGE-N's count changes with every competitor of every pair, no cells and no dead pairs."""
    tol = _tolerance(scores.sims.dtype)
    answers = _answer_curves(scores)
    n_pairs = len(scores.answer_cols)
    init = np.zeros(n_pairs, dtype=np.int64)
    ev_pair, ev_time, ev_delta = [np.zeros(0, np.int64)], [np.zeros(0)], [np.zeros(0, np.int64)]
    for p, q in enumerate(scores.pair_query):
        own = scores.answer_cols[scores.answer_ptr[q] : scores.answer_ptr[q + 1]]
        cols = np.setdiff1d(np.arange(scores.sims.shape[1]), own)
        others = scores.others[q][np.isfinite(scores.others[q])].astype(np.float64)
        curves = np.concatenate(
            [
                np.stack(
                    [
                        scores.sims[q, cols],
                        scores.tangents[q, cols],
                        scores.angles[cols],
                        scores.pulls[q, cols],
                    ],
                    axis=1,
                ).astype(np.float64),
                np.stack([others, np.zeros_like(others), np.zeros_like(others), others], axis=1),
            ]
        )
        if len(curves) == 0:
            continue
        above0, rows, times, deltas = _crossings(
            np.repeat(answers[p : p + 1], len(curves), axis=0), curves, upper, tol
        )
        init[p] = int(above0.sum())
        ev_pair.append(np.full(len(rows), p, dtype=np.int64))
        ev_time.append(times)
        ev_delta.append(deltas)
    return init, np.concatenate(ev_pair), np.concatenate(ev_time), np.concatenate(ev_delta)


@st.composite
def crowded_curves(draw):
    """Many nudged documents around few queries, so that cells prune, pairs die and curves kink."""
    scores = draw(validation_scores(max_nudged=40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # Angles bunched near cell edges as well as spread out, so that saturation lands inside
    # cells, on edges and past the domain.
    edges = np.linspace(0.0, np.pi / 2, _CELLS + 1)
    near_edges = rng.choice(edges, size=len(scores.angles)) + rng.normal(
        scale=1e-3, size=len(scores.angles)
    )
    angles = np.clip(
        np.where(rng.random(len(scores.angles)) < 0.3, near_edges, scores.angles), 0, 2
    )
    # As fine_tune's scores are: a unit query sees (A, B) of length at most 1, and a document's
    # score is continuous where it saturates (its pull is its turning score at its angle).
    a, b = scores.sims.astype(np.float64), scores.tangents.astype(np.float64)
    shrink = np.maximum(1.0, np.hypot(a, b))
    a, b = a / shrink, b / shrink
    pulls = a * np.cos(angles) + b * np.sin(angles)
    dtype = scores.sims.dtype
    return ValidationScores(
        **{
            **scores.__dict__,
            "sims": a.astype(dtype),
            "tangents": b.astype(dtype),
            "pulls": pulls.astype(dtype),
            "angles": angles,
        }
    )


@SETTINGS
@given(crowded_curves(), objectives_k)
def test_nudge_n_pruning_gives_the_best_region_of_all_competitors(scores, objective):
    obj = parse_objective(objective)
    upper = float(gamma_to_theta(2.0))
    pruned = _best_region(scores, obj, upper, *_curve_events(scores, obj.k, upper))
    unpruned = _best_region(scores, obj, upper, *unpruned_curve_events(scores, obj.k, upper))
    assert pruned == unpruned
