"""Selecting gamma on the validation window, and keeping the window's score caches in step.

:class:`GammaSelector` owns what a selection keeps between two selections: the score tables and
per-query curves (:class:`~stream_nudge.engine.scores.SelectionCache`), the documents whose
status for the window's untouched-score caches changed since the last selection, and the
reports of past selections. The engine says what happened to documents and asks for a
selection; the selector answers with a :class:`SelectionReport` (gamma in force, the best
region, the objective before and after).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from stream_nudge.core.objectives import Objective
from stream_nudge.engine.scores import SelectionCache
from stream_nudge.engine.state import DocumentTable
from stream_nudge.engine.window import ValidationWindow

__all__ = ["GammaSelector", "SelectionReport"]

# Selections remembered for reports and tests (the latest ones).
_HISTORY = 1000


@dataclass(frozen=True)
class SelectionReport:
    """One re-selection of gamma on the validation window."""

    gamma: float  # in force after this selection
    candidate: float  # the best gamma found
    changed: bool  # whether gamma changed
    value_before: float  # objective at gamma 0 (no fine-tuning)
    value_current: float  # objective at the gamma in force before
    value_after: float  # objective at the gamma in force after
    low: float  # the best region the candidate is the middle of
    high: float
    queries: int
    nudged: int
    seconds: float
    events: int


class GammaSelector:
    """Chooses gamma on the window (see the module docstring)."""

    def __init__(
        self,
        capacity: int,
        method: str,
        objective: Objective,
        max_gamma: float | None,
        min_improvement: float,
        cache_bytes: int,
    ):
        self.min_improvement = min_improvement
        self.cache = SelectionCache(capacity, method, objective, max_gamma, limit_bytes=cache_bytes)
        # Since the last selection: rows to take out of the window's untouched-score caches,
        # and rows to offer them (untouched again, or new).
        self.leave: set[int] = set()
        self.enter: set[int] = set()
        self.last: SelectionReport | None = None
        self.history: list[SelectionReport] = []

    # --- what happened to documents -------------------------------------------------------------

    def upserted(self, row: int) -> None:
        """A new or replaced original: its cached scores (if untouched) are stale; it re-enters."""
        self.leave.add(row)
        self.enter.add(row)

    def deleted(self, row: int) -> None:
        self.leave.add(row)
        self.enter.discard(row)

    def sums_changed(self, rows: np.ndarray, before: np.ndarray, after: np.ndarray) -> None:
        """Documents that start moving leave the untouched pool, those whose sum cancelled to
        zero come back to it (``before``/``after``: whether each row's sum was non-zero)."""
        self.leave.update(rows[after & ~before].tolist())
        self.enter.update(rows[before & ~after].tolist())

    # --- the selection ------------------------------------------------------------------------

    def select(
        self, docs: DocumentTable, window: ValidationWindow, gamma: float, events: int
    ) -> SelectionReport | None:
        """Select on the window; None when no window query has a live answer."""
        started = time.perf_counter()
        self.sync_caches(docs, window)
        slots, ptr, rows = _window_answers(docs, window)
        if len(slots) == 0:
            return None
        others, stale = window.others(slots)
        if stale.any():
            untouched = docs.untouched_mask()
            window.refresh(slots[stale], docs.originals, untouched, docs.row_of.get)
            others, _ = window.others(slots)
        choice, before, current, n_nudged = self.cache.select(
            docs, window, slots, ptr, rows, others, gamma
        )
        # Without hysteresis every selection takes the best region's middle, exactly what
        # fine_tune chooses on the same data, whatever was chosen before: a gamma picked on a
        # partial window must not survive a later pick that only ties it. With it, the gamma in
        # force stays unless the best beats it by more than min_improvement.
        hysteresis = self.min_improvement
        adopted = hysteresis <= 0 or choice.value - current > hysteresis
        changed = adopted and choice.gamma != gamma
        report = SelectionReport(
            gamma=choice.gamma if changed else gamma,
            candidate=choice.gamma,
            changed=changed,
            value_before=before,
            value_current=current,
            value_after=choice.value if adopted else current,
            low=choice.low,
            high=choice.high,
            queries=len(slots),
            nudged=n_nudged,
            seconds=time.perf_counter() - started,
            events=events,
        )
        self.last = report
        self.history.append(report)
        del self.history[:-_HISTORY]
        return report

    def sync_caches(self, docs: DocumentTable, window: ValidationWindow) -> None:
        """Bring the window's untouched-score caches up to what happened to documents."""
        leave = np.array(sorted(self.leave | self.enter), dtype=np.int64)
        window.forget(leave)
        enter = np.array(sorted(self.enter), dtype=np.int64)
        if len(enter):
            enter = enter[docs.alive[enter]]
            enter = enter[~docs.is_nudged(enter)]
            window.offer(enter, docs.originals[enter], [docs.ids[r] for r in enter])
        self.leave.clear()
        self.enter.clear()

    # --- state ----------------------------------------------------------------------------------

    def to_state(self) -> dict:
        """What a restored engine needs (the cache is rebuilt: its first selection is from
        scratch)."""
        return {"leave_caches": sorted(self.leave), "enter_caches": sorted(self.enter)}

    def restore(self, meta: dict) -> None:
        self.leave = set(meta["leave_caches"])
        self.enter = set(meta["enter_caches"])


def _window_answers(docs: DocumentTable, window: ValidationWindow):
    """Window slots with at least one live answer, and their answers' rows (CSR)."""
    slots, counts, rows = [], [], []
    for slot in window.active_slots():
        answer_rows = sorted(
            r for d in window.answers[slot] if (r := docs.row_of.get(d)) is not None
        )
        if answer_rows:
            slots.append(slot)
            counts.append(len(answer_rows))
            rows.extend(answer_rows)
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return np.array(slots, dtype=np.int64), ptr, np.array(rows, dtype=np.int64)
