"""The core's fast paths agree with the plain computation they replace."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_nudge.core.finetune import _segment_sums
from stream_nudge.core.geometry import gamma_to_theta
from stream_nudge.core.selection import (
    ValidationScores,
    _answer_curves,
    _capped_counts,
    _curve_at,
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


@st.composite
def validation_scores(draw):
    """Random scores as fine_tune builds them, in float32 or float64, with exact ties forced."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    nq, nn, width = draw(st.integers(1, 6)), draw(st.integers(0, 6)), draw(st.integers(1, 5))
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
