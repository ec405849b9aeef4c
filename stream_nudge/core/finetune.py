"""``fine_tune``: NUDGE-M / NUDGE-N on arrays, with gamma chosen exactly on validation queries."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stream_nudge.core.geometry import nudge_m, nudge_n, rotation, turnable, unit_rows
from stream_nudge.core.objectives import parse_objective
from stream_nudge.core.selection import (
    Selection,
    ValidationScores,
    objective_at,
    select_gamma,
)

__all__ = ["METHODS", "FineTuneResult", "ValidationReport", "fine_tune", "static_others"]

METHODS = ("nudge-m", "nudge-n")

# The corpus pass multiplies the validation queries by blocks of documents; a block's score table
# is kept near this many float32 cells (16 MB) so memory stays flat with corpus size and the table
# is still in the last-level cache when it is reduced right after the product. Smaller blocks
# were no faster alone and much slower on a busy machine: every product is a barrier for the BLAS
# threads, and one descheduled thread stalls it.
_PASS_CELLS = 1 << 22

# Per-document training sums add the first this many rows of each document one vectorised step
# at a time; a document rarely has more training queries than this (clicks), and the rare longer
# ones go through np.add.reduceat.
_DIRECT_ROWS = 8


@dataclass(frozen=True)
class ValidationReport:
    """The objective on the validation queries with the original embeddings and with the result."""

    objective: str
    before: float
    after: float
    queries: int


@dataclass(frozen=True)
class FineTuneResult:
    """What :func:`fine_tune` returns.

    Attributes
    ----------
    embeddings : float32 [n_docs, dim]
        Fine-tuned documents; unit rows for NUDGE-N. Search them with the dot product.
    gamma : float
        The chosen (or given) step size.
    validation : ValidationReport
        The objective before and after, on the validation queries.
    nudged : int
        How many documents moved (their training query sum is non-zero).
    selection : Selection or None
        The best region found, when gamma was chosen.
    """

    embeddings: np.ndarray
    gamma: float
    validation: ValidationReport
    nudged: int
    selection: Selection | None = None


def fine_tune(
    doc_embeddings: np.ndarray,
    train_queries: np.ndarray,
    train_answers: Sequence[Sequence[int]],
    val_queries: np.ndarray,
    val_answers: Sequence[Sequence[int]],
    method: str = "nudge-n",
    objective: str = "hit@1",
    train_weights: Sequence[float] | np.ndarray | None = None,
    *,
    gamma: float | None = None,
    max_gamma: float | None = None,
) -> FineTuneResult:
    """Fine-tune document embeddings with NUDGE.

    Parameters
    ----------
    doc_embeddings : [n_docs, dim]
        Original document embeddings; rows are L2-normalised on entry and must not be zero.
    train_queries, train_answers
        Training query embeddings ``[n_train, dim]`` and, per query, the rows of its relevant
        documents. Each document moves toward the (weighted) sum of its training queries.
    val_queries, val_answers
        Held-out queries and their relevant rows; gamma maximises ``objective`` on them.
        Queries without answers are ignored.
    method : {"nudge-n", "nudge-m"}
        NUDGE-N keeps rows unit-norm (``|delta|^2 <= gamma``, gamma < 2); NUDGE-M adds
        ``gamma * g`` (``|delta| <= gamma``).
    objective : str
        ``"hit@K"``, ``"mrr"`` (MRR@10), ``"mrr@K"`` or ``"ndcg@K"``.
    train_weights : [n_train], optional
        A weight per training query (default 1). Only each document's direction ``G_j / |G_j|``
        matters, so weights say how much one query counts against another; a negative weight
        pushes its documents away from that query (an explicit "not relevant").
    gamma : float, optional
        Use this gamma instead of choosing one.
    max_gamma : float, optional
        Search gamma in ``[0, max_gamma]`` only.

    Returns
    -------
    FineTuneResult

    Raises
    ------
    ValueError
        On inconsistent or non-finite input, naming the argument.

    Examples
    --------
    >>> docs = np.array([[1.0, 0.0], [0.8, 0.6]])
    >>> train = np.array([[0.0, 1.0]])
    >>> val = np.array([[0.1, 1.0]])
    >>> r = fine_tune(docs, train, [[0]], val, [[0]], method="nudge-m")
    >>> r.validation.before, r.validation.after, r.nudged
    (0.0, 1.0, 1)
    """
    method = _check_method(method)
    obj = parse_objective(objective)
    # Finite and non-zero rows are checked during the corpus pass, where the rows are in cache.
    docs = _matrix("doc_embeddings", doc_embeddings, check_finite=False)
    n_docs, dim = docs.shape
    if n_docs == 0 or dim == 0:
        raise ValueError("doc_embeddings: needs at least one document of dimension >= 1")
    train_q = _matrix("train_queries", train_queries, dim)
    val_q = _matrix("val_queries", val_queries, dim)
    train_ptr, train_rows = _answers("train_answers", train_answers, len(train_q), n_docs)
    val_ptr, val_rows = _answers("val_answers", val_answers, len(val_q), n_docs)
    weights = _weights(train_weights, len(train_q))
    if gamma is not None:
        gamma = _gamma("gamma", gamma, method)
    if max_gamma is not None:
        max_gamma = _gamma("max_gamma", max_gamma, method)

    nudged, directions = query_directions(train_q, train_ptr, train_rows, weights, n_docs)
    if method == "nudge-n":
        # Documents that cannot turn are not nudged (they stay put, and compete as untouched).
        can = turnable(docs[nudged], directions)
        nudged, directions = nudged[can], directions[can]

    val_ptr, val_rows, val_keep = _drop_unanswered(val_ptr, val_rows)
    v_unit, _ = unit_rows(val_q[val_keep])
    # One pass over the corpus normalises it and scores it against the validation queries.
    embeddings = np.empty(docs.shape, dtype=np.float32)
    col_of = np.full(n_docs, -1, dtype=np.int64)
    col_of[nudged] = np.arange(len(nudged))
    sims, others = static_others(v_unit, embeddings, col_of, val_ptr, val_rows, obj.k, raw=docs)
    originals = embeddings[nudged].astype(np.float64)
    plane = rotation(originals, directions) if method == "nudge-n" else None
    scores = assemble_scores(
        v_unit, embeddings, col_of, sims, others, directions, val_ptr, val_rows, plane
    )

    selection = None
    if gamma is None:
        if scores.n_queries == 0:
            warnings.warn(
                "fine_tune: no validation query has an answer; gamma is 0 (no fine-tuning)",
                UserWarning,
                stacklevel=2,
            )
            gamma = 0.0
        else:
            selection = select_gamma(scores, obj, method, max_gamma)
            gamma = selection.gamma
    before = objective_at(scores, obj, method, 0.0)
    after = objective_at(scores, obj, method, gamma)

    if len(nudged) and gamma > 0:
        if method == "nudge-m":
            moved = nudge_m(originals, directions, gamma)
        else:
            moved = nudge_n(originals, directions, gamma, plane)
        embeddings[nudged] = moved
    report = ValidationReport(obj.name, before, after, scores.n_queries)
    return FineTuneResult(embeddings, float(gamma), report, len(nudged), selection)


def query_directions(queries, ptr, rows, weights, n_docs):
    """Documents with a non-zero training sum ``G_j = sum w q`` and the unit direction of each.

    Sums run in float64, where float32 queries cannot overflow; weights are divided by their
    largest magnitude first (the direction does not change), so huge weights cannot either.
    """
    counts = np.diff(ptr)
    q_of_pair = np.repeat(np.arange(len(counts)), counts)
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, queries.shape[1]))
    order = np.argsort(rows, kind="stable")
    doc_sorted = rows[order]
    contrib = queries[q_of_pair[order]].astype(np.float64)
    if not np.all(weights == 1.0):
        w = weights / (np.abs(weights).max(initial=0.0) or 1.0)
        contrib *= w[q_of_pair[order]][:, None]
    starts = np.flatnonzero(np.r_[True, doc_sorted[1:] != doc_sorted[:-1]])
    sums = _segment_sums(contrib, starts)
    directions, nonzero = unit_rows(sums, out=np.empty_like(sums))
    return doc_sorted[starts][nonzero], directions[nonzero]


def _segment_sums(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Row sums of ``x`` over the segments that begin at ``starts`` (sorted, ``starts[0] == 0``).

    ``np.add.reduceat`` does this, but row-wise on a 2-d array it is several times slower than
    adding the j-th row of every segment at once, and a document has only a few training queries
    (clicks): rows are added in order, one vectorised step per position, while segments longer
    than ``_DIRECT_ROWS`` hand their tails to ``reduceat`` so that one hot document cannot cost a
    Python step per query. The order of the additions is not reduceat's; it does not matter while
    the float64 sums are exact, as they are for a few float32 rows (unit weights) whose
    coordinates span less than 2**29, and otherwise moves a sum by rounding only (a few ulps).
    """
    lengths = np.diff(np.r_[starts, len(x)])
    sums = x[starts]
    for j in range(1, min(int(lengths.max(initial=0)), _DIRECT_ROWS)):
        longer = np.flatnonzero(lengths > j)
        sums[longer] += x[starts[longer] + j]
    long = np.flatnonzero(lengths > _DIRECT_ROWS)
    if len(long):
        # The rows past the first _DIRECT_ROWS of each long segment, segment after segment.
        tail = lengths[long] - _DIRECT_ROWS
        first = np.repeat(starts[long] + _DIRECT_ROWS - np.cumsum(tail) + tail, tail)
        rows = first + np.arange(tail.sum())
        sums[long] += np.add.reduceat(x[rows], np.cumsum(tail) - tail, axis=0)
    return sums


def build_scores(
    v_unit: np.ndarray,
    embeddings: np.ndarray,
    nudged: np.ndarray,
    directions: np.ndarray,
    val_ptr: np.ndarray,
    val_rows: np.ndarray,
    k: int,
    plane=None,
    others: np.ndarray | None = None,
) -> ValidationScores:
    """The validation problem for :func:`select_gamma`.

    Without ``others`` this is one pass over the corpus (to find, per query, the best ``k`` scores
    among documents that are neither nudged nor its answers) plus products with the nudged rows.
    A caller that keeps those best scores up to date itself (the streaming engine) passes them as
    ``others`` ``[n_val, >= k]`` and pays only for the nudged rows.
    """
    col_of = np.full(embeddings.shape[0], -1, dtype=np.int64)
    col_of[nudged] = np.arange(len(nudged))
    if others is None:
        sims, others = static_others(v_unit, embeddings, col_of, val_ptr, val_rows, k)
    else:
        sims = v_unit @ embeddings[nudged].T
        if others.shape[0] != v_unit.shape[0] or others.shape[1] < k:
            raise ValueError(
                f"others: expected shape [{v_unit.shape[0]}, >= {k}], got {others.shape}"
            )
    return assemble_scores(
        v_unit, embeddings, col_of, sims, others, directions, val_ptr, val_rows, plane
    )


def assemble_scores(
    v_unit, embeddings, col_of, sims, others, directions, val_ptr, val_rows, plane=None
):
    """ValidationScores from the corpus pass's results plus products with the nudged rows."""
    pair_q = np.repeat(np.arange(len(val_ptr) - 1), np.diff(val_ptr))
    answer_static = np.einsum("ij,ij->i", v_unit[pair_q], embeddings[val_rows]).astype(np.float64)
    pulls = v_unit @ directions.astype(v_unit.dtype).T
    tangents = angles = None
    if plane is not None:
        tangents = v_unit @ plane.tangent.astype(v_unit.dtype).T
        angles = plane.angle
    return ValidationScores(
        sims=sims,
        pulls=pulls,
        answer_ptr=val_ptr,
        answer_cols=col_of[val_rows],
        answer_static=answer_static,
        others=others,
        tangents=tangents,
        angles=angles,
    )


def static_others(v_unit, embeddings, col_of, val_ptr, val_rows, k, raw=None):
    """One pass over the corpus: scores against nudged documents, and the best ``k`` others.

    Returns ``(sims [n_val, n_nudged], others [n_val, k])``; ``others`` leaves out nudged documents
    and each query's own answers. With ``raw`` given, each block of it is first checked (finite,
    non-zero) and normalised into ``embeddings``: the corpus is read once, not twice. Nudged
    documents are left out of the blocks' products (they would only be masked out again) and scored
    by one product of their own at the end, which gives ``sims`` in its final layout.
    """
    n_val = v_unit.shape[0]
    n_docs = embeddings.shape[0]
    dtype = np.result_type(v_unit, embeddings)
    others = np.full((k, n_val), -np.inf, dtype=dtype)
    untouched = col_of < 0
    pair_q = np.repeat(np.arange(n_val), np.diff(val_ptr))
    # Untouched answers, sorted by document, so that a block's are one slice; a document's row in
    # its block's table is its rank among untouched documents minus that of the block's first.
    keep_answer = untouched[val_rows]
    answer_rows, answer_q = val_rows[keep_answer], pair_q[keep_answer]
    by_row = np.argsort(answer_rows, kind="stable")
    answer_rows, answer_q = answer_rows[by_row], answer_q[by_row]
    rank = np.cumsum(untouched) - 1
    # Bounded by both tables of a block: its scores (rows x n_val) and its rows (rows x dim).
    block = max(256, _PASS_CELLS // max(n_val, embeddings.shape[1], 1))
    v_t = np.ascontiguousarray(v_unit.T)
    # One table and one row buffer for all blocks: fresh ones per block would be fresh pages to
    # fault in each time.
    table_buffer = np.empty((min(block, n_docs), n_val), dtype=dtype)
    rows_buffer = np.empty((min(block, n_docs), embeddings.shape[1]), dtype=embeddings.dtype)
    for start in range(0, n_docs, block):
        stop = min(start + block, n_docs)
        if raw is not None:
            _normalise_block(raw, embeddings, start, stop)
        local = np.flatnonzero(untouched[start:stop])
        if len(local) == 0:
            continue
        if len(local) == stop - start:
            rows = embeddings[start:stop]
        else:
            # The indices are in range by construction; with the default mode="raise", numpy
            # would write into a temporary and copy it to `out`.
            rows = np.take(
                embeddings[start:stop], local, axis=0, out=rows_buffer[: len(local)], mode="clip"
            )
        table = np.matmul(rows, v_t, out=table_buffer[: len(local)])
        lo, hi = np.searchsorted(answer_rows, [start, stop])
        table[rank[answer_rows[lo:hi]] - rank[start + local[0]], answer_q[lo:hi]] = -np.inf
        if k == 1:
            np.maximum(others[0], table.max(axis=0, initial=-np.inf), out=others[0])
        else:
            best = _top(table.T, k)
            others = _top(np.concatenate([others.T, best], axis=1), k).T
    nudged = np.flatnonzero(~untouched)
    nudged = nudged[np.argsort(col_of[nudged])]
    sims = np.matmul(v_unit, embeddings[nudged].T).astype(dtype, copy=False)
    return sims, np.ascontiguousarray(others.T)


def _normalise_block(raw, embeddings, start, stop):
    rows = raw[start:stop]
    if not np.isfinite(rows).all():
        bad = start + int(np.argmin(np.isfinite(rows).all(axis=1)))
        raise ValueError(f"doc_embeddings: row {bad} contains NaN or Inf")
    _, nonzero = unit_rows(rows, out=embeddings[start:stop])
    if not nonzero.all():
        bad = start + int(np.argmin(nonzero))
        raise ValueError(f"doc_embeddings: row {bad} is zero; documents need a direction")


def _top(x: np.ndarray, k: int) -> np.ndarray:
    if x.shape[1] <= k:
        pad = np.full((x.shape[0], k - x.shape[1]), -np.inf, dtype=x.dtype)
        return np.concatenate([x, pad], axis=1)
    return np.partition(x, x.shape[1] - k, axis=1)[:, x.shape[1] - k :]


# --- argument checks --------------------------------------------------------------------------


def _check_method(method: str) -> str:
    name = str(method).strip().lower()
    if name not in METHODS:
        raise ValueError(f"method: unknown method {method!r}; use one of {', '.join(METHODS)}")
    return name


def _matrix(name: str, x, dim: int | None = None, check_finite: bool = True) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged nested lists and the like
        raise ValueError(f"{name}: not a numeric matrix ({exc})") from exc
    if arr.size == 0 and dim is not None:
        return np.zeros((0, dim), dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d array [n, dim], got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name}: expected numbers, got dtype {arr.dtype}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name}: dimension {arr.shape[1]} does not match doc_embeddings' {dim}")
    if check_finite and not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    return arr


def _answers(name: str, answers, n_queries: int, n_docs: int):
    """Per-query answer lists as CSR (``ptr``, ``rows``), each query's rows sorted and unique."""
    if answers is None or len(answers) != n_queries:
        got = "None" if answers is None else len(answers)
        raise ValueError(
            f"{name}: needs one list of document rows per query ({n_queries}), got {got}"
        )
    try:
        lengths = np.fromiter((len(a) for a in answers), dtype=np.int64, count=n_queries)
        values = [x for a in answers for x in a]
        flat = np.asarray(values)
    except TypeError as exc:
        raise ValueError(
            f"{name}: each entry must be a list of integer document rows ({exc})"
        ) from exc
    if flat.size and (
        flat.dtype.kind not in "iu" or any(isinstance(x, bool | np.bool_) for x in values)
    ):
        # Rows are integers (whole floats pass); name the first list holding anything else.
        def bad(x) -> bool:
            if isinstance(x, bool | np.bool_):
                return True
            if isinstance(x, int | np.integer):
                return False
            return not (isinstance(x, float | np.floating) and np.isfinite(x) and x == round(x))

        first = next((i for i, a in enumerate(answers) if any(map(bad, a))), None)
        if first is not None:
            raise ValueError(
                f"{name}: document rows must be integers (first bad list: {name}[{first}])"
            )
    flat = flat.astype(np.int64) if flat.size else np.zeros(0, dtype=np.int64)
    query = np.repeat(np.arange(n_queries), lengths)
    out_of_range = (flat < 0) | (flat >= n_docs)
    if out_of_range.any():
        i = int(np.argmax(out_of_range))
        raise ValueError(
            f"{name}[{query[i]}]: document row {flat[i]} is out of range [0, {n_docs})"
        )
    key = np.unique(query * np.int64(n_docs) + flat)
    query, rows = key // n_docs, key % n_docs
    ptr = np.concatenate([[0], np.cumsum(np.bincount(query, minlength=n_queries))]).astype(np.int64)
    return ptr, rows


def _weights(weights, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != n:
        raise ValueError(
            f"train_weights: needs one weight per training query ({n}), got {w.shape[0]}"
        )
    if not np.isfinite(w).all():
        raise ValueError("train_weights: contains NaN or Inf")
    return w


def _gamma(name: str, value, method: str) -> float:
    g = float(value)
    if not np.isfinite(g) or g < 0:
        raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
    if method == "nudge-n" and g >= 2:
        raise ValueError(
            f"{name}: NUDGE-N needs gamma < 2 (a turn below 90 degrees), got {value!r}"
        )
    return g


def _drop_unanswered(ptr: np.ndarray, rows: np.ndarray):
    counts = np.diff(ptr)
    keep = counts > 0
    new_ptr = np.concatenate([[0], np.cumsum(counts[keep])]).astype(np.int64)
    return new_ptr, rows, keep
