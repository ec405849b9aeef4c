"""Selecting gamma on the validation window, and keeping the window's score caches in step.

:class:`GammaSelector` owns what a selection keeps between two selections: the score tables and
per-query curves (:class:`~stream_nudge.engine.scores.SelectionCache`), its mark in the document
table's change log (the documents changed since it last brought the window's untouched-score
caches up to date), and the reports of past selections. The engine asks for a selection; the
selector answers with a :class:`SelectionReport` (gamma in force, the best
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
        self.mark = 0  # in the document table's change log: what the window's caches reflect
        self.last: SelectionReport | None = None
        self.history: list[SelectionReport] = []

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
        """Bring the window's untouched-score caches up to what happened to documents.

        Every changed document leaves the caches (it was nudged, deleted or replaced, or it may
        have been); those untouched now enter them again with their current originals.
        """
        changed = docs.changes.since(self.mark)
        self.mark = docs.changes.mark
        window.forget(changed)
        enter = changed[docs.alive[changed]]
        enter = enter[~docs.is_nudged(enter)]
        if len(enter):
            window.offer(enter, docs.originals[enter], [docs.ids[r] for r in enter])

    # --- state ----------------------------------------------------------------------------------

    def to_state(self, docs: DocumentTable | None) -> dict:
        """What a restored engine needs: the documents changed since the window's caches were
        last brought up to date (the score cache is rebuilt: its first selection is from
        scratch)."""
        changed = docs.changes.since(self.mark).tolist() if docs is not None else []
        return {"changed_since_caches": changed}

    def restore(self, meta: dict, docs: DocumentTable | None) -> None:
        """The state :meth:`to_state` recorded; ``docs`` (restored first) gets those changes
        back in its change log. Checkpoints from before the change log listed the documents
        to take out of the caches and to offer them."""
        if docs is None:
            return
        self.mark = docs.changes.mark
        if "changed_since_caches" in meta:
            changed = meta["changed_since_caches"]
        else:
            changed = sorted(set(meta["leave_caches"]) | set(meta["enter_caches"]))
        docs.changes.touch(np.array(changed, dtype=np.int64))


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
