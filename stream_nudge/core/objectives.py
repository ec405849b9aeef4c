"""Retrieval objectives for choosing gamma: hit@K, MRR@K and NDCG@K.

Everything here works on *rank histograms*. For a validation query with answers ``a_1..a_R``, let
``c_i`` be the number of non-answer documents that score at least as high as ``a_i`` (ties count
against the answer, so that an objective is never won by rounding). Only whether ``c_i < K`` and its
value below ``K`` matter for a metric cut at ``K``, so a query is summarised by the histogram
``h[c] = #{i : min(c_i, K) == c}`` for ``c = 0..K``. All three objectives are functions of that
histogram, which lets the gamma sweep update a query's metric in O(1) as one answer's count moves.

With binary relevance and answers sorted by score, the i-th best answer (0-based) sits at rank
``1 + i + c_(i)``: the answers above it plus the non-answers above it. The sorted counts fix every
answer's rank, whatever the order among tied answers, because all answers carry the same gain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

__all__ = ["Objective", "parse_objective"]

_PATTERN = re.compile(r"^(hit|mrr|ndcg)(?:@(\d+))?$")

# MRR without a cut-off would need every static score of every validation query; MRR@10 is the
# usual reading of "MRR" in retrieval benchmarks (MS MARCO), so a bare "mrr" means that.
_DEFAULT_CUT = {"hit": 1, "mrr": 10, "ndcg": 10}


@dataclass(frozen=True)
class Objective:
    """A retrieval objective cut at rank ``k``.

    Examples
    --------
    >>> parse_objective("ndcg@10")
    Objective(kind='ndcg', k=10)
    >>> parse_objective("hit@1").from_histograms(np.array([[1, 0]]), np.array([1]))
    array([1.])
    """

    kind: str
    k: int

    @property
    def name(self) -> str:
        return f"{self.kind}@{self.k}"

    def from_histograms(self, hist: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
        """Metric per row of ``hist`` (shape ``[n, k + 1]``), with ``n_relevant`` answers per row."""
        hist = np.asarray(hist)
        k = self.k
        if self.kind == "hit":
            return (hist[:, :k].sum(axis=1) > 0).astype(np.float64)
        if self.kind == "mrr":
            present = hist[:, :k] > 0
            first = np.argmax(present, axis=1)
            return np.where(present.any(axis=1), 1.0 / (first + 1.0), 0.0)
        return self._ndcg(hist, np.asarray(n_relevant))

    def _ndcg(self, hist: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
        k = self.k
        # cum[p] = sum of discounts of ranks 1..p, with ranks beyond k worth nothing.
        discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
        cum = np.concatenate([[0.0], np.cumsum(discounts)])
        dcg = np.zeros(hist.shape[0])
        before = np.zeros(hist.shape[0], dtype=np.int64)
        for c in range(k):
            # Answers with count c fill ranks 1 + c + before .. c + before + h[c].
            first = np.minimum(1 + c + before, k + 1)
            last = np.minimum(c + before + hist[:, c], k)
            dcg += np.where(last >= first, cum[last] - cum[first - 1], 0.0)
            before = before + hist[:, c]
        ideal = cum[np.minimum(n_relevant, k)]
        return np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0)


def parse_objective(name: str) -> Objective:
    """Parse ``"hit@K"``, ``"mrr"``, ``"mrr@K"`` or ``"ndcg@K"`` (``"hit"`` alone is hit@1).

    Raises
    ------
    ValueError
        naming the argument and the accepted forms.
    """
    match = _PATTERN.match(str(name).strip().lower())
    if match is None:
        raise ValueError(
            f"objective: unknown objective {name!r}; use 'hit@K', 'mrr', 'mrr@K' or 'ndcg@K' (K >= 1)"
        )
    kind, cut = match.group(1), match.group(2)
    k = int(cut) if cut is not None else _DEFAULT_CUT[kind]
    if k < 1 or k > 1000:
        raise ValueError(f"objective: the cut-off K of {name!r} must be between 1 and 1000")
    return Objective(kind, k)
