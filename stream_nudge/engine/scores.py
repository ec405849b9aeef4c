"""What a selection of gamma computed, kept for the next one.

A selection needs, for every window query and every nudged document, the score products
``v . d``, ``v . g`` (and for NUDGE-N ``v . z``), and from them each query's objective as a
function of the step (:class:`~stream_nudge.core.selection.QueryCurves`). Between two selections
most of that does not change: a few queries enter the window and a few documents get clicks. So
:class:`SelectionCache` keeps

- the score tables, one row per window slot and one column per nudged document (float32, in
  the order the documents first entered; a column that leaves is filled by the last one);
- per window query, its part of the objective curve, its values at gamma 0 and at the gamma in
  force, and what that part was computed from (its answers, their scores, its best untouched
  scores), so that a change of any of those is seen.

At a selection it recomputes the rows of new queries, the columns of documents whose sum or
original changed (their versions in the document table's change log say which), and the curves of queries
that are new, whose inputs changed, or that a changed document can reach. A changed document
can reach a query when, before or after the change, its score curve can come within rounding of
one of the query's answers where it matters:

- NUDGE-N: anywhere on the angle's domain (bounds of each curve over the whole domain). A
  document that stays below all answers everywhere adds no crossing and, being below the
  answers, decides no "dead" cell of the pruning either (see ``_curve_events``).
- NUDGE-M: lines cross once; only the ``k`` earliest rises and ``k`` latest falls of each pair
  matter, so a document that rises after the ``k``-th rise and is not above at 0, or falls
  before the ``k``-th fall, changes nothing.

Both tests are conservative (margins well above float32 rounding of the quantities compared):
they may recompute a query needlessly, never keep one that changed. A selection from the cache
therefore equals one computed from scratch up to the rounding of the score products: BLAS
promises no bit-equality between a product's rows and the same rows of a bigger product (its
kernels, blocking and thread count follow the shape), so a score may differ by a unit or two in
its last place, which moves each end of the best region by that rounding over the slope between
the two curves crossing there. The objective's value, and which region is best, do not depend on
it: score differences within rounding count as ties (see :mod:`stream_nudge.core.selection`).

Memory: ``window capacity x (nudged documents, grown by 1/4)`` float32 per table, two tables for
NUDGE-M and three for NUDGE-N (2,000 x 20,000: 160 MB each), plus the curves (a few numbers per
query). Beyond ``limit_bytes`` nothing is kept: every selection computes from scratch, as
before, and frees the tables after.
"""

from __future__ import annotations

import numpy as np

from stream_nudge.core.geometry import gamma_to_theta
from stream_nudge.core.objectives import Objective
from stream_nudge.core.selection import (
    ValidationScores,
    best_selection,
    query_curves,
    query_values,
    step_limit,
)
from stream_nudge.engine.columns import ScoreColumns

__all__ = ["SelectionCache"]

# The default bound on the kept tables: a 2,000-query window with up to ~40,000 nudged
# documents under NUDGE-N (three tables), or ~60,000 under NUDGE-M (two).
DEFAULT_LIMIT_BYTES = 1 << 30

# The reach tests' margin: far above float32 rounding of a score difference (a few 1e-7), far
# below the gaps that decide a crossing's place.
_MARGIN = 1e-5

# Recomputing the curves of every query costs about as much as testing this share of the
# columns against every query; beyond it, recompute them all.
_ALL_COLUMNS = 0.25


def _curve_bounds(a, b, phi, flat, upper: float):
    """Lowest and highest value of curves ``a cos t + b sin t`` (``flat`` from ``phi`` on) over
    ``t in [0, upper]``, in float64."""
    a, b, phi, flat = (np.asarray(x, np.float64) for x in (a, b, phi, flat))
    end = np.minimum(phi, upper)
    at_end = a * np.cos(end) + b * np.sin(end)
    low, high = np.minimum(a, at_end), np.maximum(a, at_end)
    peak = np.arctan2(b, a)  # the sinusoid's top; its bottom is half a turn away
    amplitude = np.hypot(a, b)
    for angle, sign in ((peak, 1.0), (peak + np.pi, -1.0)):
        angle = np.mod(angle, 2.0 * np.pi)
        inside = angle < end
        if sign > 0:
            high = np.where(inside, amplitude, high)
        else:
            low = np.where(inside, -amplitude, low)
    saturates = phi < upper
    low = np.where(saturates, np.minimum(low, flat), low)
    high = np.where(saturates, np.maximum(high, flat), high)
    return low, high


class SelectionCache:
    """Score tables and per-query curves kept between selections (see the module docstring)."""

    def __init__(
        self,
        capacity: int,
        method: str,
        objective: Objective,
        max_gamma: float | None,
        limit_bytes: int = DEFAULT_LIMIT_BYTES,
    ):
        self.capacity = capacity
        self.method = method
        self.objective = objective
        self.max_gamma = max_gamma
        self.limit_bytes = limit_bytes
        self.n_tables = 3 if method == "nudge-n" else 2
        self.upper = step_limit(method, max_gamma)
        self.all_columns = _ALL_COLUMNS
        self.tol = 16.0 * float(np.finfo(np.float32).eps)  # the selector's, for float32 scores
        self.clear()

    def clear(self) -> None:
        """Forget everything: the next selection computes from scratch."""
        cap = self.capacity
        self.columns = ScoreColumns(cap, self.n_tables)
        self.row_epoch = np.full(cap, -1, dtype=np.int64)
        self.query_epoch = np.full(cap, -1, dtype=np.int64)
        self.inputs: list[bytes | None] = [None] * cap
        self.base = np.zeros(cap)
        self.zero = np.zeros(cap)
        self.current = np.zeros(cap)
        self.current_gamma = np.full(cap, np.nan)
        self.times: list[np.ndarray] = [np.zeros(0)] * cap
        self.changes: list[np.ndarray] = [np.zeros(0)] * cap
        self.levels: list[np.ndarray] = [np.zeros(0)] * cap  # the value after each change
        # NUDGE-M, per slot and pair: answer line (c, m), k-th rise, k-th fall.
        self.lines: list[np.ndarray | None] = [None] * cap
        # NUDGE-N, per slot: the lowest any answer's curve gets.
        self.lowest = np.full(cap, np.inf)

    @property
    def nbytes(self) -> int:
        return self.columns.nbytes

    # --- the selection ------------------------------------------------------------------------

    def select(self, docs, window, slots, ptr, rows, others, gamma_now: float):
        """The best gamma on window ``slots`` (with answers ``rows`` in CSR ``ptr`` and best
        untouched scores ``others``), and the mean objective at 0 and at ``gamma_now``.

        Returns ``(Selection, value at 0, value at gamma_now, nudged documents)``.
        """
        planes = self.method == "nudge-n"
        nudged = docs.nudged_rows()
        # Directions and planes brought up to date; their vectors are gathered below only for the
        # columns that need products.
        _, _, angles, can = docs.geometry(nudged, planes=planes, vectors=False)
        if planes:
            nudged, angles = nudged[can], angles[can]
        occupied = np.array([q is not None for q in window.query_ids], dtype=bool)
        present = occupied & (self.row_epoch == window.epoch)
        where = np.full(docs.n_rows, -1, dtype=np.int64)
        where[nudged] = np.arange(len(nudged))
        old, fresh = self.columns.sync(docs, nudged, where, self.all_columns)
        n = self.columns.n
        col_pos = where[self.columns.rows[:n]]
        if planes:
            self.columns.angles[:n] = angles[col_pos]
        unit = window.unit

        def vectors_of(cols):
            col_rows = self.columns.rows[cols]
            directions, tangents, _, _ = docs.geometry(col_rows, planes=planes)
            out = [docs.originals[col_rows], directions]
            if planes:
                out.append(tangents)
            return out

        # New values of changed columns for the rows kept; then whole rows for new queries.
        kept = np.flatnonzero(present)
        if len(fresh) and len(kept):
            v = unit[kept]
            for t, x in zip(self.columns.tables, vectors_of(fresh), strict=True):
                t[np.ix_(kept, fresh)] = v @ x.T
        new_rows = slots[~present[slots]]
        if len(new_rows):
            v = unit[new_rows]
            run = _is_run(new_rows)
            for t, x in zip(self.columns.tables, vectors_of(np.arange(n)), strict=True):
                if run:
                    # Straight into the table (a full refresh): no second 160 MB to write.
                    np.matmul(v, x.T, out=t[new_rows[0] : new_rows[-1] + 1, :n])
                else:
                    t[new_rows, :n] = v @ x.T
            self.row_epoch[new_rows] = window.epoch[new_rows]

        # Each query's inputs: its answers, their scores, its best untouched scores.
        col_of = np.full(docs.n_rows, -1, dtype=np.int64)
        col_of[self.columns.rows[:n]] = np.arange(n)
        counts = np.diff(ptr)
        pair_slot = np.repeat(slots, counts)
        cols = col_of[rows]
        nudged_answer = cols >= 0
        static = np.einsum("ij,ij->i", unit[pair_slot], docs.originals[rows]).astype(np.float64)
        static[nudged_answer] = 0.0
        answer_values = [_pick(t, pair_slot, cols) for t in self.columns.tables]
        if planes:
            answer_values.append(_pick(self.columns.angles[None, :n], np.zeros_like(cols), cols))
        answer_values = np.stack(answer_values, axis=1)
        others = np.asarray(others, dtype=np.float32)
        dirty = self.query_epoch[slots] != window.epoch[slots]
        for i, slot in enumerate(slots.tolist()):
            p0, p1 = ptr[i], ptr[i + 1]
            key = b"".join(
                (
                    rows[p0:p1].tobytes(),
                    nudged_answer[p0:p1].tobytes(),
                    static[p0:p1].tobytes(),
                    answer_values[p0:p1].tobytes(),
                    others[i].tobytes(),
                )
            )
            if key != self.inputs[slot]:
                dirty[i] = True
                self.inputs[slot] = key

        # Queries a changed document can reach, before or after its change.
        if old is None:
            dirty[:] = True
        elif (len(old[-1]) or len(fresh)) and not dirty.all():
            clean = np.flatnonzero(~dirty)
            before = old
            after = [t[:, fresh] for t in self.columns.tables] + [self.columns.angles[fresh]]
            reach = self._reach(slots[clean], before) | self._reach(slots[clean], after)
            dirty[clean[reach]] = True

        # Recompute the curves of the dirty queries. Only the queries selected on now stay valid:
        # one left out now (no live answer) missed the reach tests of this round.
        self._compute(slots, ptr, rows, cols, static, others, dirty, gamma_now)
        self.query_epoch[:] = -1
        self.query_epoch[slots] = window.epoch[slots]

        # The values at the gamma in force, from the curves where they were computed at another.
        step = float(gamma_to_theta(gamma_now)) if planes else gamma_now
        for slot in slots[self.current_gamma[slots] != gamma_now].tolist():
            if gamma_now == 0.0:
                self.current[slot] = self.zero[slot]
            else:
                # The value on the region holding the step: the same histogram of counts as a
                # direct evaluation there (gamma, chosen inside a region of the curve that held
                # this query's changes, is never at one of them), so the same value to the bit.
                at = np.searchsorted(self.times[slot], step, side="left")
                self.current[slot] = self.levels[slot][at - 1] if at else self.base[slot]
            self.current_gamma[slot] = gamma_now

        nq = len(slots)
        before = float(np.sort(self.zero[slots]).sum() / nq)
        current = float(np.sort(self.current[slots]).sum() / nq)
        listed = slots.tolist()
        choice = best_selection(
            self.base[slots],
            np.concatenate([self.times[s] for s in listed]),
            np.concatenate([self.changes[s] for s in listed]),
            self.method,
            self.max_gamma,
            lambda: before,
        )
        if self.nbytes > self.limit_bytes:
            self.clear()
        return choice, before, current, n

    def _reach(self, slots: np.ndarray, columns) -> np.ndarray:
        """Which of the (clean) ``slots`` the given column values may reach (see the module)."""
        out = np.zeros(len(slots), dtype=bool)
        if columns[-1].size == 0:
            return out
        margin = self.tol + _MARGIN
        if self.method == "nudge-n":
            sims, pulls, tangents, angles = columns
            _, high = _curve_bounds(
                sims[slots], tangents[slots], angles[None, :], pulls[slots], self.upper
            )
            return (high >= self.lowest[slots][:, None] - margin).any(axis=1)
        sims, pulls, _ = columns
        for i, slot in enumerate(slots.tolist()):
            lines = self.lines[slot]  # per pair: c, m, k-th rise, k-th fall
            c = sims[slot][None, :].astype(np.float64) - lines[:, 0:1]
            m = pulls[slot][None, :].astype(np.float64) - lines[:, 1:2]
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (-c - self.tol) / m
            above = c >= -margin
            # Falls clearly before the k-th latest fall: k other lines are above until then.
            early_fall = (m < -margin) & (t * (1 + _MARGIN) + _MARGIN < lines[:, 3:4])
            # Rises clearly after the k-th earliest rise (or past the domain), or never.
            t_low = (-c - margin) / np.maximum(m + _MARGIN, 1e-300)
            late_rise = (m <= self.tol - _MARGIN) | (
                (t_low > lines[:, 2:3] * (1 + _MARGIN) + _MARGIN) | (t_low >= self.upper)
            )
            reach = np.where(above, ~early_fall, ~late_rise)
            out[i] = reach.any()
        return out

    def _compute(self, slots, ptr, rows, cols, static, others, dirty, gamma_now) -> None:
        """Curves and values of the queries ``slots[dirty]``, into the per-slot store."""
        which = np.flatnonzero(dirty)
        if len(which) == 0:
            return
        n = self.columns.n
        chosen = slots[which]
        counts = np.diff(ptr)[which]
        pairs = np.concatenate([np.arange(ptr[i], ptr[i + 1]) for i in which.tolist()])
        if _is_run(chosen):
            tables = [t[chosen[0] : chosen[-1] + 1, :n] for t in self.columns.tables]
        else:
            tables = [t[chosen, :n] for t in self.columns.tables]
        scores = ValidationScores(
            sims=tables[0],
            pulls=tables[1],
            answer_ptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            answer_cols=cols[pairs],
            answer_static=static[pairs],
            others=others[which],
            tangents=tables[2] if self.method == "nudge-n" else None,
            angles=self.columns.angles[:n] if self.method == "nudge-n" else None,
        )
        curves = query_curves(scores, self.objective, self.method, self.max_gamma)
        zero = query_values(scores, self.objective, self.method, 0.0)
        current = (
            zero
            if gamma_now == 0.0
            else query_values(scores, self.objective, self.method, gamma_now)
        )
        bounds = np.searchsorted(curves.query, np.arange(len(chosen) + 1))
        pair_ptr = scores.answer_ptr
        q, a_cols = scores.pair_query, scores.answer_cols
        nudged = a_cols >= 0
        static_or = np.where(nudged, 0.0, scores.answer_static)
        if self.method == "nudge-m":
            c = _pick(tables[0], q, a_cols) + static_or
            m = _pick(tables[1], q, a_cols)
            lines = np.stack([c, m, curves.rise, curves.fall], axis=1).astype(np.float64)
        else:
            low, _ = _curve_bounds(
                _pick(tables[0], q, a_cols) + static_or,
                _pick(tables[2], q, a_cols),
                _pick(self.columns.angles[None, :n], np.zeros_like(q), a_cols),
                _pick(tables[1], q, a_cols) + static_or,
                self.upper,
            )
            lowest = np.minimum.reduceat(low, pair_ptr[:-1])
        for j, slot in enumerate(chosen.tolist()):
            b0, b1 = bounds[j], bounds[j + 1]
            self.times[slot] = curves.times[b0:b1]
            self.changes[slot] = curves.changes[b0:b1]
            self.levels[slot] = curves.levels[b0:b1]
            if self.method == "nudge-m":
                self.lines[slot] = lines[pair_ptr[j] : pair_ptr[j + 1]]
            else:
                self.lowest[slot] = lowest[j]
        self.base[chosen] = curves.base
        self.zero[chosen] = zero
        self.current[chosen] = current
        self.current_gamma[chosen] = gamma_now


def _is_run(index: np.ndarray) -> bool:
    """Whether ``index`` is ``a, a + 1, ..., b`` (a slice will do instead of a gather)."""
    return len(index) > 0 and bool(np.all(np.diff(index) == 1))


def _pick(table: np.ndarray, q: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``table[q, cols]`` in float64 where ``cols >= 0``, 0 elsewhere (also for no columns)."""
    if table.shape[1] == 0:
        return np.zeros(len(q))
    return np.where(cols >= 0, table[q, np.maximum(cols, 0)], 0.0).astype(np.float64)
