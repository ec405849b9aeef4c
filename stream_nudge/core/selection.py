"""Exact choice of gamma (MaxA-EFT) from two or three score matrices.

A validation query ``v`` sees nudged document ``j`` with score
- NUDGE-M: ``s_j(gamma) = v.d_j + gamma * v.g_j``, a line;
- NUDGE-N: ``s_j(theta) = A_j cos(theta) + B_j sin(theta)`` with ``A = v.d``, ``B = v.z`` (``z`` the
  unit tangent toward ``g``) until ``theta`` reaches the angle ``phi_j`` between ``d_j`` and ``g_j``,
  and ``v.g_j`` from there on;
and every untouched document with a fixed score. As gamma grows, an answer's rank changes only where
its curve crosses another one, so the objective is piecewise constant. We compute, for every
(validation query, answer) pair, the points where the count of non-answers above the answer changes,
merge them per query into changes of the metric (see :mod:`objectives`), and sweep all queries'
changes at once. The best region is exact; we return its middle, since its end points are ties,
or 0 when 0 is as good as it (no gamma helps: do no harm).

Only the best ``K`` fixed scores of each query (``K`` of the objective) can ever matter among the
untouched documents, which is why callers pass just those (``others``): the cost grows with the
number of nudged documents, not with the corpus.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from stream_nudge.core.geometry import gamma_to_theta, theta_to_gamma
from stream_nudge.core.objectives import Objective

__all__ = [
    "QueryCurves",
    "Selection",
    "ValidationScores",
    "best_selection",
    "objective_at",
    "query_curves",
    "query_values",
    "select_gamma",
]

# Working arrays are cut into blocks of about this many float64 elements (32 MB) so that memory stays
# flat whatever the number of validation pairs and nudged documents.
_BLOCK_ELEMENTS = 1 << 22

# Objective values are sums of floats; regions within this of the best count as tied, and ties go
# to the smaller gamma.
_TIE = 1e-9


def _tolerance(dtype) -> float:
    """Score differences this small are rounding, not signal: they count as ties.

    Scores of unit vectors are sums of ``dim`` rounded products, a few units in the last place of 1;
    16 of them (2e-6 in float32, 4e-15 in float64) keeps a mathematically exact tie a tie.
    """
    return 16.0 * float(
        np.finfo(np.dtype(dtype) if np.dtype(dtype).kind == "f" else np.float64).eps
    )


# Where NUDGE-M's best region has no end, gamma is taken this far past its start (or twice the
# start): a tenth of a document's length clears rounding-level ties and is still a small move.
_OPEN_STEP = 0.1

# NUDGE-N's pruning cuts the angle domain into this many cells and scans the validation queries in
# blocks of this many rows. Over 90 degrees, 14 cells of 6.4 degrees let a score stray at most
# 1 - cos(3.2 deg) = 0.0016 past its end values; fewer cells keep many more candidates for the
# exact crossings (4x more at 8 cells), more cells cost a pass over the scores each (12 to 16
# cells are within 10% on the benchmark, 14 the fastest). A block of 32 queries keeps a block's
# tables (32 x n_nudged float32 each) in cache without paying Python's per-call cost too often.
_CELLS = 14
_QUERY_BLOCK = 32

# Change points closer than this (relative) are one point. Two curves that touch, or three that
# cross at one point, give change points that differ only by rounding; a "region" between them
# exists only in the last bits, and no float32 embedding could ever land in it.
_MERGE = 1e-12

# The sweep takes change points of different queries this close (absolute below 1, relative above)
# as one point. Scores are float32, and BLAS may round a score differently with the product's
# shape, thread count or CPU; a crossing then moves by that rounding over the slope between the
# curves crossing there. Two points that coincide in exact arithmetic (ties broken at the rounding
# tolerance, lattice data, duplicate documents) would otherwise leave a sliver of a region between
# them whose sign, and whether it is the best region, depends on the last bit of a product. The
# worst such jitter comes from ties at the start: a tie at step 0 is broken where the gap between
# the two curves passes the rounding tolerance (2e-6), at a step of tolerance over slope, and
# rounding of the tie itself moves that point by a tenth or so of it; 1e-5 covers slopes down to
# about 0.2 (measured: 1e-6 still let permuted lattice problems choose different slivers, 1e-5
# did not in 10,000). A region this narrow is no choice to lose: a step of 1e-5 moves a unit
# embedding by 1e-5, the size of float32 noise in the scores that would choose it.
_SAME_POINT = 1e-5


@dataclass(frozen=True)
class ValidationScores:
    """Validation queries seen through the nudged documents.

    Attributes
    ----------
    sims : [n_val, n_nudged]
        ``v . d_j``, each validation query against each nudged document's original embedding.
    pulls : [n_val, n_nudged]
        ``v . g_j``, against each nudged document's unit direction.
    answer_ptr : int [n_val + 1]
        Query ``i``'s answers are entries ``answer_ptr[i]:answer_ptr[i+1]`` (at least one each).
    answer_cols : int [n_pairs]
        The answer's column among the nudged documents, or -1 for an untouched document.
    answer_static : float [n_pairs]
        ``v . d_a`` for untouched answers (ignored where ``answer_cols >= 0``).
    others : [n_val, m]
        The best scores among untouched documents that are not answers of that query, best first or
        in any order, ``-inf`` where there are fewer; ``m >= K`` of the objective.
    tangents : [n_val, n_nudged] or None
        ``v . z_j`` for NUDGE-N.
    angles : [n_nudged] or None
        ``phi_j`` for NUDGE-N.
    """

    sims: np.ndarray
    pulls: np.ndarray
    answer_ptr: np.ndarray
    answer_cols: np.ndarray
    answer_static: np.ndarray
    others: np.ndarray
    tangents: np.ndarray | None = None
    angles: np.ndarray | None = None

    @property
    def n_queries(self) -> int:
        return len(self.answer_ptr) - 1

    @property
    def n_relevant(self) -> np.ndarray:
        return np.diff(self.answer_ptr)

    @property
    def pair_query(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_queries), self.n_relevant)


@dataclass(frozen=True)
class Selection:
    """The chosen gamma, the objective there, and the best region it is the middle of."""

    gamma: float
    value: float
    low: float
    high: float


def select_gamma(
    scores: ValidationScores, objective: Objective, method: str, max_gamma: float | None = None
) -> Selection:
    """The gamma that maximises ``objective`` on the validation queries, exactly.

    ``method`` is ``"nudge-m"`` (gamma in ``[0, max_gamma]``, unbounded by default) or
    ``"nudge-n"`` (gamma in ``[0, max_gamma)``, at most 2, i.e. a turn of up to 90 degrees).
    """
    if scores.n_queries == 0:
        return Selection(0.0, 0.0, 0.0, 0.0)
    curves = query_curves(scores, objective, method, max_gamma)
    return best_selection(
        curves.base,
        curves.times,
        curves.changes,
        method,
        max_gamma,
        lambda: objective_at(scores, objective, method, 0.0),
    )


def _middle(low: float, high: float) -> float:
    if not np.isfinite(high):
        # The last region of NUDGE-M never ends; every point in it is as good. Step well clear of
        # its start, where the deciding lines are still within rounding of each other.
        return low + max(low, _OPEN_STEP)
    return 0.5 * (low + high)


def objective_at(
    scores: ValidationScores, objective: Objective, method: str, gamma: float
) -> float:
    """The mean objective over the validation queries at one gamma, by direct evaluation.

    A competitor counts as above an answer when it scores at least the answer's score minus the
    rounding tolerance (ties go against the answer), exactly as the sweep in :func:`select_gamma`
    reads it, so the two agree at every gamma.
    """
    if scores.n_queries == 0:
        return 0.0
    return float(query_values(scores, objective, method, gamma).mean())


def query_values(
    scores: ValidationScores, objective: Objective, method: str, gamma: float
) -> np.ndarray:
    """Each validation query's objective at one gamma (see :func:`objective_at`)."""
    if scores.n_queries == 0:
        return np.zeros(0)
    k = objective.k
    tol = _tolerance(scores.sims.dtype)
    dtype = np.result_type(scores.sims.dtype, np.float32)
    if method == "nudge-m" and gamma != 0.0:
        counts = _line_counts(scores, gamma, tol, dtype)
    else:
        counts = _capped_counts(scores, k, method, gamma, tol, dtype)
    hist = np.zeros((scores.n_queries, k + 1), dtype=np.int64)
    np.add.at(hist, (scores.pair_query, np.minimum(counts, k)), 1)
    return objective.from_histograms(hist, scores.n_relevant)


def _line_counts(scores: ValidationScores, gamma: float, tol: float, dtype) -> np.ndarray:
    """Per pair, the competitors at or above the answer at ``gamma`` on NUDGE-M's lines."""
    counts = np.empty(len(scores.answer_cols), dtype=np.int64)
    width = scores.sims.shape[1] + scores.others.shape[1]
    for rows, q in _pair_blocks(scores, width, _BLOCK_ELEMENTS // 4):
        pr, pc = _answer_cells(scores, rows, q)
        dc, dm = _line_gaps(scores, rows, q, dtype)
        diff = dc + np.asarray(gamma, dtype) * dm
        diff[pr, pc] = -np.inf  # the query's own answers are not competitors
        counts[rows] = (diff >= -tol).sum(axis=1)
    return counts


def _capped_counts(scores, k: int, method: str, gamma: float, tol: float, dtype) -> np.ndarray:
    """Per pair, ``min(k, competitors at or above the answer)`` where competitors' scores do not
    depend on the answer: at gamma 0 (both methods) and for NUDGE-N's curves.

    Whether competitor ``s`` counts is ``s - answer >= -tol``, monotone in ``s``, so only each
    query's ``k`` best competitors matter: they are found once per query instead of comparing
    every competitor with every answer. Scores and differences are computed with the very
    operations of the per-pair form, so the counts are the same to the last bit.
    """
    nq, nn = scores.sims.shape
    theta = float(gamma_to_theta(gamma)) if method == "nudge-n" else 0.0
    cols = scores.answer_cols
    pair_query = scores.pair_query
    if gamma == 0.0:
        # Both methods score the original embeddings at gamma 0.
        answer = np.where(
            cols >= 0, _gather(scores.sims, pair_query, cols), scores.answer_static
        ).astype(dtype)
    else:
        answer = _curve_at(_answer_curves(scores), np.full((len(cols), 1), theta))[:, 0]
        angles = np.asarray(scores.angles, np.float64)[None, :]
    counts = np.empty(len(cols), dtype=np.int64)
    # Smaller blocks than the sweep's: the NUDGE-N path holds several float64 tables at once.
    step = max(1, (_BLOCK_ELEMENTS // 4) // max(nn + scores.others.shape[1], 1))
    for q0 in range(0, nq, step):
        q1 = min(q0 + step, nq)
        if gamma == 0.0:
            comp = np.concatenate(
                [scores.sims[q0:q1].astype(dtype), np.asarray(scores.others[q0:q1], dtype)], axis=1
            )
        else:
            comp = np.concatenate(
                [
                    np.where(
                        theta < angles,
                        scores.sims[q0:q1].astype(np.float64) * np.cos(theta)
                        + scores.tangents[q0:q1].astype(np.float64) * np.sin(theta),
                        scores.pulls[q0:q1].astype(np.float64),
                    ),
                    np.asarray(scores.others[q0:q1], np.float64),
                ],
                axis=1,
            )
        p0, p1 = scores.answer_ptr[q0], scores.answer_ptr[q1]
        own = cols[p0:p1] >= 0
        comp[pair_query[p0:p1][own] - q0, cols[p0:p1][own]] = -np.inf  # not competitors
        best = _largest(comp, k)
        gap = best[pair_query[p0:p1] - q0] - answer[p0:p1, None]
        counts[p0:p1] = (gap >= -tol).sum(axis=1)
    return counts


def _line_gaps(scores: ValidationScores, rows: np.ndarray, q: np.ndarray, dtype):
    """For pairs ``rows``: each competitor's line minus the answer's, as (dc, dm).

    Competitors are the nudged documents, then the query's best untouched ones. Slopes within the
    rounding tolerance of the answer's are made equal: such lines are parallel up to rounding, and
    taking the rounding at its word would put crossings at absurd gammas.
    """
    cols = scores.answer_cols[rows]
    nudged = cols >= 0
    c_a = np.where(nudged, _gather(scores.sims, q, cols), scores.answer_static[rows]).astype(dtype)
    m_a = np.where(nudged, _gather(scores.pulls, q, cols), 0.0).astype(dtype)
    nn = scores.sims.shape[1]
    # Differences written straight into their place: one pass per table instead of a gather, a
    # concatenation and a subtraction. Untouched competitors have slope 0, so their dm is -m_a.
    dc = np.empty((len(rows), nn + scores.others.shape[1]), dtype=dtype)
    np.subtract(_take(scores.sims, q, 0), c_a[:, None], out=dc[:, :nn])
    np.subtract(np.asarray(scores.others, dtype)[q], c_a[:, None], out=dc[:, nn:])
    dm = np.empty_like(dc)
    np.subtract(_take(scores.pulls, q, 0), m_a[:, None], out=dm[:, :nn])
    dm[:, nn:] = -m_a[:, None]
    dm[np.abs(dm) <= _tolerance(scores.sims.dtype)] = 0.0
    return dc, dm


def _take(table: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
    """``np.take`` along ``axis``, which is the fastest gather for a contiguous table but first
    copies a whole non-contiguous one (a view of wider tables, as the selection cache passes);
    fancy indexing reads such a view in place. Both give the same values. (A block of rows is
    small: ``np.take``'s copy of it costs little, and its gather along axis 1 is much faster.)"""
    if table.flags.c_contiguous:
        return np.take(table, index, axis=axis)
    return table[index] if axis == 0 else table[:, index]


def _gather(table: np.ndarray, q: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``table[q, cols]`` where ``cols >= 0``, 0 elsewhere (and for a table without columns)."""
    if table.shape[1] == 0:
        return np.zeros(len(q), dtype=table.dtype)
    return np.where(cols >= 0, table[q, np.maximum(cols, 0)], 0)


def _pair_blocks(scores: ValidationScores, width: int, cells: int = _BLOCK_ELEMENTS):
    """(pair indices, their queries) in blocks that keep ``len(block) * width <= cells``."""
    n_pairs = len(scores.answer_cols)
    step = max(1, cells // max(width, 1))
    pair_query = scores.pair_query
    for start in range(0, n_pairs, step):
        rows = np.arange(start, min(start + step, n_pairs))
        yield rows, pair_query[rows]


def _answer_cells(scores: ValidationScores, rows: np.ndarray, q: np.ndarray):
    """For each pair in ``rows`` (local index) and each nudged answer of its query: (local pair, column)."""
    starts = scores.answer_ptr[q]
    lens = scores.answer_ptr[q + 1] - starts
    local = np.repeat(np.arange(len(rows)), lens)
    offsets = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    cols = scores.answer_cols[np.repeat(starts, lens) + offsets]
    keep = cols >= 0
    return local[keep], cols[keep]


# --- NUDGE-M: lines ---------------------------------------------------------------------------


def _line_events(scores: ValidationScores, k: int, upper: float, thresholds: bool = False):
    """Per pair: the count of competitors above the answer just after gamma = 0, and its changes.

    A competitor line is above the answer line for all gamma > 0 ("always"), on ``[0, t]`` (it
    starts above and falls behind, L) or on ``[t, inf)`` (U). Only whether fewer than ``k`` lines
    are above matters, so of the L thresholds only the ``k`` largest and of the U thresholds only
    the ``k`` smallest can change anything: when ``k`` L lines are above, the count is at least ``k``
    whatever the others do, and likewise for U. With ``thresholds``, also each pair's ``k``-th
    smallest U and ``k``-th largest L threshold (see :class:`QueryCurves`).
    """
    n_pairs = len(scores.answer_cols)
    init = np.zeros(n_pairs, dtype=np.int64)
    kth_rise = np.full(n_pairs, np.inf)
    kth_fall = np.full(n_pairs, -np.inf)
    ev_pair, ev_time, ev_delta = [], [], []
    dtype = np.result_type(scores.sims.dtype, np.float32)
    tol = _tolerance(scores.sims.dtype)
    # A competitor is above the answer where dc + gamma * dm >= -tol (ties count against the
    # answer, as in objective_at): always, from t on (rises), or up to t (falls).
    for rows, q in _pair_blocks(scores, scores.sims.shape[1] + scores.others.shape[1]):
        dc, dm = _line_gaps(scores, rows, q, dtype)
        pr, pc = _answer_cells(scores, rows, q)
        dc[pr, pc] = -np.inf
        always = (dc >= -tol) & (dm >= 0)
        falls = (dm < 0) & (dc > -tol)
        rises = (dm > 0) & (dc < -tol)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            t = np.negative(dc, out=dc)
            t -= tol
            t /= dm
        rises &= t < upper
        t_fall = _largest(np.where(falls, t, -np.inf), k)
        t_rise = _smallest(np.where(rises, t, np.inf), k)
        falling = np.count_nonzero(np.isfinite(t_fall), axis=1)
        init[rows] = np.count_nonzero(always, axis=1) + falling
        kth_rise[rows] = t_rise.max(axis=1)
        kth_fall[rows] = t_fall.min(axis=1)
        # A fall past the upper end never happens inside the domain: the line stays above.
        for table, delta in ((t_fall, -1), (t_rise, +1)):
            r, c = np.nonzero(np.isfinite(table) & (table < upper))
            ev_pair.append(rows[r])
            ev_time.append(table[r, c].astype(np.float64))
            ev_delta.append(np.full(len(r), delta, dtype=np.int64))
    events = (init, np.concatenate(ev_pair), np.concatenate(ev_time), np.concatenate(ev_delta))
    return (*events, kth_rise, kth_fall) if thresholds else events


def _smallest(x: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` smallest entries of each row (any order), padded with ``inf``."""
    if x.shape[1] < k:
        x = np.concatenate([x, np.full((x.shape[0], k - x.shape[1]), np.inf)], axis=1)
    if k == 1:
        return x.min(axis=1, keepdims=True)
    return np.partition(x, k - 1, axis=1)[:, :k]


def _largest(x: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest entries of each row (any order), padded with ``-inf``."""
    if x.shape[1] < k:
        x = np.concatenate([x, np.full((x.shape[0], k - x.shape[1]), -np.inf)], axis=1)
    if k == 1:
        return x.max(axis=1, keepdims=True)
    return np.partition(x, x.shape[1] - k, axis=1)[:, x.shape[1] - k :]


# --- NUDGE-N: turning curves ------------------------------------------------------------------


def _curve_events(scores: ValidationScores, k: int, upper: float):
    """As :func:`_line_events` for NUDGE-N's curves on ``theta in (0, upper)``.

    Two curves can cross up to three times (each is a sinusoid until its saturation angle, then
    flat), so there is no half-line structure to cut on. Instead the domain is cut into cells, and
    per cell a (query, document) pair is kept only if the document can get near one of the query's
    answers there. Within a cell of width ``w`` a score with ``|v| = 1`` strays at most
    ``1 - cos(w/2)`` beyond the range of its two end values, so end values bound it without trig.
    A (validation pair, cell) is *dead* when ``k`` non-answers are surely above the answer all
    through the cell: its count is at least ``k`` there whatever else happens, so it asks nothing
    of the competitors. The few kept competitors' crossings are then found in closed form.
    """
    nq, nn = scores.sims.shape
    tol = _tolerance(scores.sims.dtype)
    pair_query = scores.pair_query
    n_pairs = len(pair_query)
    angles = np.asarray(scores.angles, np.float64)
    answer = _answer_curves(scores)
    edges = np.linspace(0.0, upper, _CELLS + 1)
    # Bounds within a cell, from end values: a score (amplitude <= 1) strays at most `slack` beyond
    # them, a difference of two scores at most twice that. 1% over covers |v| a rounding above 1;
    # tol covers float32 scores.
    slack = 1.01 * (1.0 - np.cos(0.5 * (edges[1] - edges[0]))) + tol
    slack2 = 2.0 * slack
    at_edges = _curve_at(answer, np.broadcast_to(edges, (n_pairs, _CELLS + 1)))
    ans_low = np.minimum(at_edges[:, :-1], at_edges[:, 1:]) - slack
    ans_high = np.maximum(at_edges[:, :-1], at_edges[:, 1:]) + slack
    # Where a curve saturates inside a cell it is not one sinusoid there, and only the bound on
    # its own range holds; the sharper bound on differences needs both curves smooth.
    ans_kink = (answer[:, 2][:, None] > edges[None, :-1]) & (
        answer[:, 2][:, None] < edges[None, 1:]
    )
    # Blocks hold the documents in order of their saturation angle: those saturated at an edge are
    # then a leading run of columns, and those saturating inside a cell a contiguous run, so both
    # are slices instead of masked or gathered copies, which cost ten times more.
    by_angle = np.argsort(angles, kind="stable")
    column_of = np.empty(nn, dtype=np.int64)
    column_of[by_angle] = np.arange(nn)
    sorted_angles = angles[by_angle]
    saturated_upto = np.searchsorted(sorted_angles, edges, side="right")
    kink_from = saturated_upto[:-1]
    kink_to = np.searchsorted(sorted_angles, edges[1:], side="left")

    others = np.asarray(scores.others)
    keep = np.zeros((nq, nn), dtype=bool)  # columns in order of angle
    keep_others = np.zeros(others.shape, dtype=bool)
    dead = np.zeros((n_pairs, _CELLS), dtype=bool)
    cos_e, sin_e = np.cos(edges), np.sin(edges)
    dtype = np.result_type(scores.sims.dtype, np.float32)
    # The same in the scores' own dtype: a float64 scalar would make numpy compute every product
    # with a float32 table in float64 and cast back, three times slower; the rounding this adds
    # is one unit in the last place, far inside `tol`.
    cos_d, sin_d = cos_e.astype(dtype), sin_e.astype(dtype)
    for q0 in range(0, nq, _QUERY_BLOCK):
        q1 = min(q0 + _QUERY_BLOCK, nq)
        nb = q1 - q0
        a = np.take(scores.sims[q0:q1], by_angle, axis=1).astype(dtype, copy=False)
        b = np.take(scores.tangents[q0:q1], by_angle, axis=1).astype(dtype, copy=False)
        flat = np.take(scores.pulls[q0:q1], by_angle, axis=1).astype(dtype, copy=False)
        p0, p1 = scores.answer_ptr[q0], scores.answer_ptr[q1]
        pq = pair_query[p0:p1] - q0
        cols = scores.answer_cols[p0:p1]
        cell_r, cell_c = pq[cols >= 0], column_of[cols[cols >= 0]]
        block_others = others[q0:q1]
        if k == 1:
            best_other = block_others.max(axis=1, initial=-np.inf)
        else:
            best_other = _largest(block_others, k).min(axis=1)
        # `cur` holds the scores at the cell's left edge, `nxt` at its right edge.
        cur, nxt, tmp = a.copy(), np.empty_like(a), np.empty_like(a)
        near = np.empty(a.shape, dtype=bool)
        block_keep = keep[q0:q1]
        # The previous cell's lowest live answer at its right edge (this cell's left edge).
        low_before = np.full(nb, np.inf)
        for c in range(_CELLS):
            # Scores at the cell's right edge, flat where the document has saturated.
            sat = saturated_upto[c + 1]
            nxt[:, :sat] = flat[:, :sat]
            np.multiply(a[:, sat:], cos_d[c + 1], out=nxt[:, sat:])
            np.multiply(b[:, sat:], sin_d[c + 1], out=tmp[:, sat:])
            nxt[:, sat:] += tmp[:, sat:]
            # The k-th best score that non-answers surely reach everywhere in the cell; an answer
            # below it all through the cell is dead there.
            np.minimum(cur, nxt, out=tmp)
            tmp[cell_r, cell_c] = -np.inf
            if k == 1:
                floor = np.maximum(tmp.max(axis=1, initial=-np.inf) - slack, best_other)
            else:
                floor = _largest(np.concatenate([tmp - slack, block_others], axis=1), k).min(axis=1)
            live = ans_high[p0:p1, c] >= floor[pq] - tol
            dead[p0:p1, c] = ~live
            lp = np.flatnonzero(live)
            # The lowest live answer at each edge, and over the cell.
            low_left = np.full(nb, np.inf)
            low_right = np.full(nb, np.inf)
            low_cell = np.full(nb, np.inf)
            np.minimum.at(low_left, pq[lp], at_edges[p0 + lp, c])
            np.minimum.at(low_right, pq[lp], at_edges[p0 + lp, c + 1])
            np.minimum.at(low_cell, pq[lp], ans_low[p0 + lp, c])
            # A document matters here only if it may get above a live answer: sharp test on the
            # difference at the edges, where both curves are smooth through the cell. An edge is
            # shared by two cells, so it is tested once, against the lower of their two answers
            # (a score comes near x or y when it comes near min(x, y)); the right edge waits for
            # the next cell. The comparison runs on float32 scores against a limit rounded to
            # float32, which moves it by half a unit in the last place, far inside its `tol`.
            edge_limit = (np.minimum(low_before, low_left) - (slack2 + tol)).astype(dtype)
            block_keep |= np.greater_equal(cur, edge_limit[:, None], out=near)
            low_before = low_right
            # ... and the range test where a document or an answer saturates inside the cell.
            kinked_rows = np.unique(pq[lp[ans_kink[p0 + lp, c]]])
            kinked_cols = slice(kink_from[c], kink_to[c])
            # In the scores' dtype, so that the comparisons below run in float32; rounding the
            # limit moves it by half a unit in the last place, far inside the `tol` it includes.
            limit = (low_cell - slack - tol).astype(dtype)[:, None]
            # A document that saturates inside the cell has not saturated at its left edge, so
            # `cur` holds its turning score there.
            if kink_to[c] > kink_from[c]:
                reach = np.maximum(nxt[:, kinked_cols], cur[:, kinked_cols])
                block_keep[:, kinked_cols] |= reach >= limit
            if len(kinked_rows):
                reach = np.maximum(cur[kinked_rows], nxt[kinked_rows])
                block_keep[kinked_rows] |= reach >= limit[kinked_rows]
            keep_others[q0:q1] |= block_others >= (low_cell - tol)[:, None]
            cur, nxt = nxt, cur
        block_keep |= np.greater_equal(
            cur, (low_before - (slack2 + tol)).astype(dtype)[:, None], out=near
        )
        block_keep[cell_r, cell_c] = False
    keep_others &= np.isfinite(others)

    # Pairs dead all through need no competitors; their count is k from the start.
    all_dead = dead.all(axis=1)
    init = np.where(dead[:, 0], k, 0).astype(np.int64)
    # Dead cells add k at the start of each run of them and take it away at its end.
    run = np.diff(
        np.concatenate([np.zeros((n_pairs, 1), np.int8), dead.astype(np.int8)], axis=1), axis=1
    )
    ev_pair, ev_time, ev_delta = [], [], []
    r, c = np.nonzero(run[:, 1:])
    ev_pair.append(r)
    ev_time.append(edges[c + 1])
    ev_delta.append(run[r, c + 1].astype(np.int64) * k)

    # Back to the scores' columns, in the order np.nonzero gives on them.
    sq, sj = np.nonzero(keep)
    sj = by_angle[sj]
    in_order = np.lexsort((sj, sq))
    sq, sj = sq[in_order], sj[in_order]
    oq, oi = np.nonzero(keep_others)
    cand_q = np.concatenate([sq, oq])
    order = np.argsort(cand_q, kind="stable")
    cand_q = cand_q[order]
    cand = np.stack(
        [
            np.concatenate([scores.sims[sq, sj], others[oq, oi]]).astype(np.float64),
            np.concatenate([scores.tangents[sq, sj], np.zeros(len(oq))]).astype(np.float64),
            np.concatenate([angles[sj], np.zeros(len(oq))]),
            np.concatenate([scores.pulls[sq, sj], others[oq, oi]]).astype(np.float64),
        ],
        axis=1,
    )[order]
    cand_ptr = np.searchsorted(cand_q, np.arange(nq + 1))
    per_pair = np.where(all_dead, 0, cand_ptr[pair_query + 1] - cand_ptr[pair_query])
    total = np.cumsum(per_pair)
    budget = _BLOCK_ELEMENTS // 16
    cuts = (
        np.searchsorted(total, np.arange(budget, total[-1] + budget, budget)) + 1 if n_pairs else []
    )
    bounds = np.unique(np.clip(np.concatenate([[0], cuts, [n_pairs]]), 0, n_pairs))
    for p0, p1 in itertools.pairwise(bounds):
        rows = np.arange(p0, p1)
        lens = per_pair[rows]
        if lens.sum() == 0:
            continue
        t_pair = np.repeat(rows, lens)
        starts = cand_ptr[pair_query[rows]]
        t_cand = (
            np.repeat(starts, lens)
            + np.arange(lens.sum())
            - np.repeat(np.cumsum(lens) - lens, lens)
        )
        above0, e_loc, e_time, e_delta = _crossings(answer[t_pair], cand[t_cand], upper, tol)
        init += np.bincount(t_pair, weights=above0, minlength=n_pairs).astype(np.int64)
        ev_pair.append(t_pair[e_loc])
        ev_time.append(e_time)
        ev_delta.append(e_delta)
    return init, np.concatenate(ev_pair), np.concatenate(ev_time), np.concatenate(ev_delta)


def _answer_curves(scores: ValidationScores, rows: np.ndarray | None = None) -> np.ndarray:
    """Each validation pair's answer as a curve (A, B, phi, flat value); untouched ones are flat."""
    rows = np.arange(len(scores.answer_cols)) if rows is None else rows
    cols = scores.answer_cols[rows]
    pair_query = scores.pair_query[rows]
    nudged = cols >= 0
    static = np.asarray(scores.answer_static, np.float64)[rows]
    angle = (
        np.asarray(scores.angles, np.float64)[np.maximum(cols, 0)] if len(scores.angles) else 0.0
    )
    return np.stack(
        [
            np.where(nudged, _gather(scores.sims, pair_query, cols), static),
            np.where(nudged, _gather(scores.tangents, pair_query, cols), 0.0),
            np.where(nudged, angle, 0.0),
            np.where(nudged, _gather(scores.pulls, pair_query, cols), static),
        ],
        axis=1,
    ).astype(np.float64)


def _curve_at(curve: np.ndarray, theta: np.ndarray, trig=None) -> np.ndarray:
    """Curves (rows of A, B, phi, flat) at angles ``theta``; ``trig`` is ``(cos, sin)`` of
    ``theta`` when the caller has them already."""
    a, b, phi, flat = (curve[:, i : i + 1] for i in range(4))
    cos, sin = trig if trig is not None else (np.cos(theta), np.sin(theta))
    return np.where(theta < phi, a * cos + b * sin, flat)


def _crossings(answer: np.ndarray, other: np.ndarray, upper: float, tol: float):
    """Where ``other`` is at or above ``answer`` on ``(0, upper)``, as a start value and changes.

    Both are rows of (A, B, phi, flat). On each piece between the two saturation angles the
    difference is ``alpha cos + beta sin + kappa``, whose zeros are ``psi +- arccos(-kappa / R)``.
    The sign is then read at the middle of every gap between consecutive candidate points, so a
    root found a little off never flips a decision, only moves it by that little.
    """
    n = len(answer)
    phi_a = np.clip(answer[:, 2], 0.0, upper)
    phi_o = np.clip(other[:, 2], 0.0, upper)
    lo_kink, hi_kink = np.minimum(phi_a, phi_o), np.maximum(phi_a, phi_o)
    piece_edges = np.stack([np.zeros(n), lo_kink, hi_kink, np.full(n, upper)], axis=1)
    points = [piece_edges]
    # The third piece, past both saturation angles, is two flat scores: it has no roots.
    for i in range(2):
        left, right = piece_edges[:, i], piece_edges[:, i + 1]
        mid = 0.5 * (left + right)
        a_moves = (mid < answer[:, 2])[:, None]
        o_moves = (mid < other[:, 2])[:, None]
        alpha = np.where(o_moves[:, 0], other[:, 0], 0.0) - np.where(
            a_moves[:, 0], answer[:, 0], 0.0
        )
        beta = np.where(o_moves[:, 0], other[:, 1], 0.0) - np.where(
            a_moves[:, 0], answer[:, 1], 0.0
        )
        # Roots of f + tol: where "at or above, up to rounding" begins or ends.
        kappa = np.where(o_moves[:, 0], 0.0, other[:, 3]) - np.where(
            a_moves[:, 0], 0.0, answer[:, 3]
        )
        kappa += tol
        r = np.hypot(alpha, beta)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = -kappa / r
        ok = (r > tol) & (np.abs(ratio) <= 1.0)
        psi = np.arctan2(beta, alpha)
        delta = np.arccos(np.clip(np.where(ok, ratio, 0.0), -1.0, 1.0))
        for root in (psi + delta, psi - delta):
            root = np.mod(root, 2.0 * np.pi)
            inside = ok & (root > left) & (root < right)
            points.append(np.where(inside, root, np.inf)[:, None])
    pts = np.sort(np.concatenate(points, axis=1), axis=1)
    # Drop repeats so that every gap between consecutive finite points has positive length.
    repeat = np.zeros_like(pts, dtype=bool)
    repeat[:, 1:] = pts[:, 1:] <= pts[:, :-1] + _MERGE
    pts = np.sort(np.where(repeat, np.inf, pts), axis=1)
    gap_ok = np.isfinite(pts[:, 1:])
    mids = np.where(gap_ok, 0.5 * (pts[:, :-1] + np.where(gap_ok, pts[:, 1:], 0.0)), 0.0)
    trig = (np.cos(mids), np.sin(mids))
    above = (_curve_at(other, mids, trig) >= _curve_at(answer, mids, trig) - tol) & gap_ok
    above0 = above[:, 0].astype(np.float64)
    change = gap_ok[:, 1:] & (above[:, 1:] != above[:, :-1])
    r, c = np.nonzero(change)
    times = pts[r, c + 1]
    deltas = np.where(above[r, c + 1], 1, -1).astype(np.int64)
    return above0, r, times, deltas


# --- the sweep --------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryCurves:
    """Each validation query's objective as a step function of the step size.

    The step is gamma for NUDGE-M and the angle theta for NUDGE-N. Query ``i`` is worth
    ``base[i]`` just after 0 and changes by ``changes[j]`` at ``times[j]`` (to ``levels[j]``) for
    every ``j`` with ``query[j] == i``; its changes come in time order. Each query's part is a function
    of that query's scores alone, so it can be kept and reused while they do not change (see
    :mod:`stream_nudge.engine.scores`), and :func:`best_region` adds up any set of them.

    For NUDGE-M, ``rise`` and ``fall`` hold per validation pair the ``k``-th smallest gamma at
    which a competitor line rises above the answer (``inf`` with fewer) and the ``k``-th largest
    at which one falls below it (``-inf`` with fewer): a competitor that changes beyond both
    leaves the pair's count, capped at ``k``, as it was.
    """

    base: np.ndarray
    query: np.ndarray
    times: np.ndarray
    changes: np.ndarray
    levels: np.ndarray
    rise: np.ndarray | None = None
    fall: np.ndarray | None = None


def query_curves(
    scores: ValidationScores, objective: Objective, method: str, max_gamma: float | None = None
) -> QueryCurves:
    """Every validation query's objective over the step, exactly (see :class:`QueryCurves`)."""
    rise = fall = None
    if method == "nudge-m":
        init, ev_pair, ev_time, ev_delta, rise, fall = _line_events(
            scores, objective.k, step_limit(method, max_gamma), thresholds=True
        )
    else:
        init, ev_pair, ev_time, ev_delta = _curve_events(
            scores, objective.k, step_limit(method, max_gamma)
        )
    base, q, t, change, level = _query_changes(scores, objective, init, ev_pair, ev_time, ev_delta)
    return QueryCurves(base, q, t, change, level, rise, fall)


def step_limit(method: str, max_gamma: float | None) -> float:
    """The end of the step's domain: gamma for NUDGE-M (unbounded by default), theta for NUDGE-N."""
    if method == "nudge-m":
        return np.inf if max_gamma is None else float(max_gamma)
    return float(gamma_to_theta(2.0 if max_gamma is None else min(float(max_gamma), 2.0)))


def best_selection(
    base: np.ndarray,
    times: np.ndarray,
    changes: np.ndarray,
    method: str,
    max_gamma: float | None,
    at_zero,
) -> Selection:
    """The best gamma from the queries' curves (``base`` one value per query; ``times`` and
    ``changes`` all their changes, in any order). ``at_zero()`` gives the mean objective at gamma
    0: where it is as good as the best region, the choice is 0."""
    upper = step_limit(method, max_gamma)
    low, high, value = best_region(base, times, changes, upper)
    if method == "nudge-n":
        low, high = float(theta_to_gamma(low)), float(theta_to_gamma(high))
    zero = at_zero()
    if zero >= value - _TIE:
        # Gamma 0 is among the best: no gamma beats not moving, while any positive one still
        # moves documents (a NUDGE-N turn grows like the square root of gamma) for nothing the
        # validation queries can see. Stay at 0. (This covers nothing changing anywhere on the
        # domain too: nothing nudged, or nothing any step can reorder.)
        return Selection(0.0, zero, low, high)
    if method == "nudge-m" and low == 0.0 and not np.isfinite(high):
        # One region for all gamma > 0, better than 0: take a modest step.
        return Selection(_OPEN_STEP, value, low, high)
    return Selection(_middle(low, high), value, low, high)


def _best_region(scores, objective, upper, init, ev_pair, ev_time, ev_delta):
    """Turn per-pair count changes into the objective over the step; return its best region."""
    base, _, t, change, _ = _query_changes(scores, objective, init, ev_pair, ev_time, ev_delta)
    return best_region(base, t, change, upper)


def _query_changes(scores, objective, init, ev_pair, ev_time, ev_delta):
    """Per-pair count changes -> each query's value just after 0 and its changes of value.

    Every sort has a full key, so a query's changes come out the same, to the last bit, whatever
    order its pairs' events were found in and whatever other queries were computed with it.
    """
    k = objective.k
    pair_query = scores.pair_query
    n_rel = scores.n_relevant
    nq = scores.n_queries

    # 1. Each pair's running count, capped at k: only changes below the cap move a metric.
    order = np.lexsort((ev_delta, ev_time, ev_pair))
    ev_pair, ev_time, ev_delta = ev_pair[order], ev_time[order], ev_delta[order]
    running = _segment_cumsum(ev_delta, ev_pair) + init[ev_pair]
    after = np.minimum(running, k)
    before = np.minimum(running - ev_delta, k)
    moved = after != before
    q = pair_query[ev_pair[moved]]
    t = ev_time[moved]
    frm, to = before[moved], after[moved]

    # 2. Each query's histogram of counts, before and after each change, in time order.
    hist0 = np.zeros((nq, k + 1), dtype=np.int64)
    np.add.at(hist0, (pair_query, np.minimum(init, k)), 1)
    base = objective.from_histograms(hist0, n_rel)
    order = np.lexsort((t, q))
    q, t, frm, to = q[order], t[order], frm[order], to[order]
    step = np.zeros((len(q), k + 1), dtype=np.int32)
    np.add.at(step, (np.arange(len(q)), frm), -1)
    np.add.at(step, (np.arange(len(q)), to), 1)
    hist_after = hist0[q] + _segment_cumsum(step, q)
    level = objective.from_histograms(hist_after, n_rel[q])
    change = level - objective.from_histograms(hist_after - step, n_rel[q])
    return base, q, t, change, level


def best_region(base: np.ndarray, t: np.ndarray, change: np.ndarray, upper: float):
    """All queries together: the objective on each region between consecutive change points, and
    the best region as ``(low, high, mean value)``.

    Sums run in an order fixed by the values (base values sorted, changes by time and then
    value), so the same queries give the same result to the last bit in any order.
    """
    nq = len(base)
    if nq == 0:
        return 0.0, 0.0, 0.0
    order = np.lexsort((change, t))
    t, change = t[order], change[order]
    first = np.flatnonzero(np.r_[True, np.diff(t) > _SAME_POINT * np.maximum(1.0, np.abs(t[1:]))])
    first = first[first < len(t)]
    times = t[first]
    steps = np.add.reduceat(change, first) if len(t) else np.zeros(0)
    totals = np.sort(base).sum() + np.concatenate([[0.0], np.cumsum(steps)])
    best = int(np.flatnonzero(totals >= totals.max() - _TIE)[0])
    low = 0.0 if best == 0 else float(times[best - 1])
    high = float(times[best]) if best < len(times) else float(upper)
    return low, high, float(totals[best] / nq)


def _segment_cumsum(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Cumulative sum of ``values`` (along axis 0) restarting wherever sorted ``keys`` change."""
    if len(values) == 0:
        return values.copy()
    total = np.cumsum(values, axis=0)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    lengths = np.diff(np.r_[starts, len(keys)])
    offset = total[starts] - values[starts]
    return total - np.repeat(offset, lengths, axis=0)
