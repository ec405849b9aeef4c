"""Test-set retrieval metrics, as the NUDGE paper's evaluation computes them.

Retrieval is by dot product over all documents. With ``rel`` the graded relevance of a query's
judged documents:
- ``R@k = |relevant in top k| / min(#relevant, k)``;
- ``NDCG@k`` with linear gains (gain = grade) and discount ``1 / log2(rank + 1)``;
- ``MRR``: reciprocal rank of the first relevant document, over the whole ranking.
Ties in score are broken by document row (the lower row first), which is what a stable sort of
the negated scores gives; with float scores they are rare.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["ndcg_of_rankings", "rankings", "retrieval_metrics"]

# Validation queries are scored against the corpus in blocks of this many queries.
_QUERY_BLOCK = 256


def rankings(doc_embeddings: np.ndarray, queries: np.ndarray, depth: int) -> np.ndarray:
    """The ``depth`` best document rows per query, best first (ties: lower row first)."""
    return _ranked(doc_embeddings, queries, depth)[0]


def _ranked(doc_embeddings, queries, depth: int, relevance=None):
    """:func:`rankings`, and with ``relevance`` also each query's rank (from 0) of its first
    relevant document in the whole ranking, or -1 if it has none: the rank is counted from the
    scores (documents above, and tied ones on a lower row), with no full sort."""
    docs = np.asarray(doc_embeddings, dtype=np.float32)
    q = np.asarray(queries, dtype=np.float32)
    depth = min(depth, docs.shape[0])
    out = np.empty((q.shape[0], depth), dtype=np.int64)
    first = np.full(q.shape[0], -1, dtype=np.int64)
    doc_rows = np.arange(docs.shape[0])
    for start in range(0, q.shape[0], _QUERY_BLOCK):
        scores = q[start : start + _QUERY_BLOCK] @ docs.T
        if depth < docs.shape[0]:
            negated = -scores
            part = np.argpartition(negated, depth - 1, axis=1)[:, :depth]
            # Where documents tie at the cut, argpartition takes any of them: those queries
            # take the lowest rows of the tie, from a stable sort (rare with float scores).
            cut = np.take_along_axis(negated, part, axis=1).max(axis=1)
            for j in np.flatnonzero((negated <= cut[:, None]).sum(axis=1) > depth):
                part[j] = np.argsort(negated[j], kind="stable")[:depth]
        else:
            part = np.tile(doc_rows, (scores.shape[0], 1))
        picked = np.take_along_axis(scores, part, axis=1)
        order = np.lexsort((part, -picked), axis=1)
        out[start : start + scores.shape[0]] = np.take_along_axis(part, order, axis=1)
        if relevance is None:
            continue
        for j, i in enumerate(range(start, start + scores.shape[0])):
            rows = np.array(sorted(r for r, grade in relevance[i].items() if grade > 0), np.int64)
            if not rows.size:
                continue
            # The best relevant document: the highest score, the lowest row among equals.
            best = rows[np.argmax(scores[j, rows])]
            score = scores[j, best]
            first[i] = np.count_nonzero(scores[j] > score) + np.count_nonzero(
                scores[j, :best] == score
            )
    return out, first


def retrieval_metrics(
    doc_embeddings: np.ndarray,
    queries: np.ndarray,
    relevance: Sequence[Mapping[int, float]],
    ks: Sequence[int] = (1, 10),
    ndcg_k: int = 10,
) -> dict[str, float]:
    """Mean R@k for each ``k``, NDCG@``ndcg_k`` and MRR over ``queries``, in percent.

    ``relevance[i]`` maps document rows to the grade (> 0) of query ``i``'s judged documents.

    >>> docs = np.eye(3)
    >>> retrieval_metrics(docs, np.array([[0.0, 1.0, 0.5]]), [{2: 1}])["R@1"]
    0.0
    """
    n_docs = np.asarray(doc_embeddings).shape[0]
    ranked, first_hit = _ranked(doc_embeddings, queries, max(*ks, ndcg_k), relevance)
    recall = {k: [] for k in ks}
    ndcg, mrr = [], []
    discount = 1.0 / np.log2(np.arange(2, ranked.shape[1] + 2))
    for i, rel in enumerate(relevance):
        grades = np.zeros(n_docs)
        for row, grade in rel.items():
            grades[row] = grade
        hits = grades[ranked[i]] > 0
        n_rel = int((grades > 0).sum())
        for k in ks:
            recall[k].append(hits[:k].sum() / min(n_rel, k))
        ndcg.append(_ndcg(grades[ranked[i][:ndcg_k]], np.sort(grades)[::-1][:ndcg_k], discount))
        mrr.append(1.0 / (first_hit[i] + 1) if first_hit[i] >= 0 else 0.0)
    out = {f"R@{k}": 100.0 * float(np.mean(v)) for k, v in recall.items()}
    out[f"NDCG@{ndcg_k}"] = 100.0 * float(np.mean(ndcg))
    out["MRR"] = 100.0 * float(np.mean(mrr))
    return out


def _ndcg(gains: np.ndarray, ideal: np.ndarray, discount: np.ndarray) -> float:
    return (gains * discount[: len(gains)]).sum() / (ideal * discount[: len(ideal)]).sum()


def ndcg_of_rankings(
    ranked: Sequence[Sequence[str]], relevant: Sequence[Mapping[str, float]], k: int = 10
) -> float:
    """Mean NDCG@k in percent of rankings someone else made (a search backend's answers: the
    ids it returned, best first), as :func:`retrieval_metrics` computes it.

    >>> ndcg_of_rankings([["a", "b"], ["c", "a"]], [{"a": 1.0}, {"a": 1.0}], k=2)
    81.54648767857287
    """
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    out = []
    for ids, rel in zip(ranked, relevant, strict=True):
        gains = np.array([rel.get(i, 0.0) for i in list(ids)[:k]], dtype=np.float64)
        ideal = np.sort(np.fromiter(rel.values(), dtype=np.float64))[::-1][:k]
        out.append(_ndcg(gains, ideal, discount))
    return 100.0 * float(np.mean(out))
