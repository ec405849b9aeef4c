"""Hypothesis strategies: small retrieval problems on an integer lattice.

Coordinates are small integers, so duplicate documents, parallel and antiparallel query sums and
exact score ties come up often, while unrelated scores stay well apart and the float arithmetic of
the fast code and of the oracles agrees on every decision.
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import strategies as st

# Whether this is a CI run (``CI`` set), where the time is there to search harder.
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def examples(n: int) -> int:
    """``n`` hypothesis examples for a local run, four times as many in CI: the fast tests stay
    within their budget, CI searches harder."""
    return 4 * n if IN_CI else n


@st.composite
def problems(draw, max_docs=7, max_dim=4, max_train=6, max_val=5, allow_empty=True):
    dim = draw(st.integers(1, max_dim))
    n_docs = draw(st.integers(1, max_docs))
    lattice = st.integers(-3, 3)

    def vectors(n, nonzero):
        rows = []
        for _ in range(n):
            row = draw(st.lists(lattice, min_size=dim, max_size=dim))
            if nonzero and not any(row):
                row[0] = 1
            rows.append(row)
        return np.array(rows, dtype=np.float64).reshape(n, dim)

    docs = vectors(n_docs, nonzero=True)
    lo = 0 if allow_empty else 1
    n_train = draw(st.integers(lo, max_train))
    n_val = draw(st.integers(lo, max_val))
    train = vectors(n_train, nonzero=False)
    val = vectors(n_val, nonzero=False)
    answer = st.lists(st.integers(0, n_docs - 1), min_size=1, max_size=min(3, n_docs))
    train_answers = [draw(answer) for _ in range(n_train)]
    val_answers = [draw(answer) for _ in range(n_val)]
    return docs, train, train_answers, val, val_answers


objectives = st.sampled_from(["hit@1", "hit@2", "hit@3", "mrr@3", "mrr", "ndcg@2", "ndcg@5"])
