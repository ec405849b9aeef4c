"""Plain, slow, obviously-correct implementations that the fast code is checked against."""

from __future__ import annotations

import math

import numpy as np


def plain_metric(scores: np.ndarray, answers, kind: str, k: int) -> float:
    """One query: rank all documents by score, ties put non-answers first (pessimistic)."""
    answers = set(int(a) for a in answers)
    order = sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j in answers))
    relevant = [pos + 1 for pos, j in enumerate(order) if j in answers]
    if kind == "hit":
        return 1.0 if relevant and relevant[0] <= k else 0.0
    if kind == "mrr":
        return 1.0 / relevant[0] if relevant and relevant[0] <= k else 0.0
    dcg = sum(1.0 / math.log2(p + 1) for p in relevant if p <= k)
    ideal = sum(1.0 / math.log2(p + 1) for p in range(1, min(len(answers), k) + 1))
    return dcg / ideal


def plain_objective(embeddings, queries, answers, kind: str, k: int) -> float:
    """Mean of :func:`plain_metric` over the queries that have answers, scoring by dot product."""
    e = np.asarray(embeddings, dtype=np.float64)
    values = []
    for q, ans in zip(np.asarray(queries, dtype=np.float64), answers, strict=False):
        if len(ans):
            values.append(plain_metric(e @ q, ans, kind, k))
    return float(np.mean(values)) if values else 0.0


def plain_query_sums(n_docs, dim, queries, answers, weights=None):
    """G_j = sum of w * q over the training pairs, one pair at a time."""
    g = np.zeros((n_docs, dim))
    for i, ans in enumerate(answers):
        w = 1.0 if weights is None else float(weights[i])
        for a in set(ans):
            g[a] += w * np.asarray(queries[i], dtype=np.float64)
    return g


def bisect_root(f, lo: float, hi: float, iterations: int = 80) -> float:
    """A sign change of ``f`` in ``[lo, hi]``, by bisection."""
    f_lo = f(lo)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        f_mid = f(mid)
        if (f_mid >= 0) == (f_lo >= 0):
            lo, f_lo = mid, f_mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
