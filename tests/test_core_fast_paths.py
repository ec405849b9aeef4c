"""The core's fast paths agree with the plain computation they replace."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_nudge.core.finetune import _segment_sums

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
