"""The rolling validation window, and each window query's best scores among untouched documents.

Gamma is chosen on the latest ``capacity`` validation queries (by first arrival). For each of them
we keep a small cache of its best scores among *untouched* documents that are not its answers:
only those can compete with nudged documents (see :mod:`stream_nudge.core.selection`), and keeping
them up to date costs a product with new documents, not a pass over the corpus per selection.

Cache invariant, per query: every untouched non-answer document scoring at least ``floor`` is in
the cache. Removing documents (they got nudged, deleted or replaced) keeps it; a new untouched
document enters only if it scores at least ``floor``; truncating the cache to its width raises
``floor`` to the best score dropped. The best ``k`` cached scores are then the true best ``k``
whenever at least ``k`` entries remain; otherwise the query needs a pass (``floor = +inf`` marks
that).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from stream_nudge.core.finetune import _PASS_CELLS
from stream_nudge.core.geometry import unit_rows

__all__ = ["ValidationWindow"]

# Cache entries beyond the objective's k: room for documents to leave (get nudged, deleted)
# before the query needs another pass over the corpus.
CACHE_SPARE = 8

# A pass finds its candidates in runs of this many documents (see _above): short enough that few
# runs of a query hold one once its threshold is set, long enough that the table of runs' best
# scores is small.
_CHUNK = 64

# A pass over the corpus starts with a block of this many documents, small so that each query's
# running threshold is set before the big blocks come.
_FIRST_BLOCK = 1024


def _merge_top(best, best_rows, q, rows, scores, keep):
    """Merge candidates (query q, row, score) into each query's sorted best ``keep``."""
    nq = best.shape[0]
    all_q = np.concatenate([np.repeat(np.arange(nq), keep), q])
    all_scores = np.concatenate([best.ravel(), scores.astype(np.float32)])
    all_rows = np.concatenate([best_rows.ravel(), rows])
    # By query, then best score first; ties by row, so that the result is deterministic.
    order = np.lexsort((all_rows, -all_scores, all_q))
    all_q, all_scores, all_rows = all_q[order], all_scores[order], all_rows[order]
    starts = np.searchsorted(all_q, np.arange(nq))
    rank = np.arange(len(all_q)) - starts[all_q]
    take = rank < keep
    out = np.full((nq, keep), -np.inf, dtype=np.float32)
    out_rows = np.full((nq, keep), -1, dtype=np.int64)
    out[all_q[take], rank[take]] = all_scores[take]
    out_rows[all_q[take], rank[take]] = all_rows[take]
    return out, out_rows


def _above(table: np.ndarray, threshold: np.ndarray):
    """Entries of ``table`` (documents x queries) above their query's ``threshold``, as (query,
    document, score).

    After the first blocks few entries are above, but for a while nearly every query has one
    somewhere, so finding them by query would scan nearly the whole table again. Instead each
    run of ``_CHUNK`` documents gets its best score per query (one reduction over the table),
    and only the (run, query) cells whose best is above are searched.
    """
    n_docs, n_q = table.shape
    whole = n_docs - n_docs % _CHUNK
    parts = []
    if whole:
        runs = table[:whole].reshape(whole // _CHUNK, _CHUNK, n_q)
        c, q = np.nonzero(runs.max(axis=1) > threshold)
        if len(c):
            cells = runs[c, :, q]  # (cells, _CHUNK)
            j, r = np.nonzero(cells > threshold[q][:, None])
            parts.append((q[j], c[j] * _CHUNK + r, cells[j, r]))
    if whole < n_docs:
        r, q = np.nonzero(table[whole:] > threshold)
        parts.append((q, r + whole, table[whole:][r, q]))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, table.dtype)
    return tuple(np.concatenate(x) for x in zip(*parts, strict=True))


class ValidationWindow:
    """The latest ``capacity`` validation queries, their answers, and their score caches."""

    def __init__(self, capacity: int, dim: int, k: int):
        self.capacity = capacity
        self.dim = dim
        self.k = k
        self.width = k + CACHE_SPARE
        self.raw = np.zeros((capacity, dim), dtype=np.float32)
        self._unit = np.zeros((capacity, dim), dtype=np.float32)
        self.query_ids: list[str | None] = [None] * capacity
        self.answers: list[dict[str, float]] = [{} for _ in range(capacity)]
        self.slot_of: dict[str, int] = {}
        self.order: deque[str] = deque()
        self.answer_slots: dict[str, set[int]] = {}
        self.cache_rows = np.full((capacity, self.width), -1, dtype=np.int64)
        self.cache_scores = np.full((capacity, self.width), -np.inf, dtype=np.float32)
        self.floor = np.full(capacity, np.inf)
        # When each query first arrived, as (event count, seconds): a folded query's clicks age
        # from then (see Decay).
        self.born = np.full((capacity, 2), np.nan)
        self._unit_stale: list[int] = []
        # A number per slot, new every time the slot takes a query: what was computed for one
        # query is never taken for another that got its slot.
        self.epoch = np.zeros(capacity, dtype=np.int64)
        self._epochs = 0
        # Free slots, lowest last (popped first).
        self._free: list[int] = list(range(capacity - 1, -1, -1))

    def to_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """The window as named arrays and JSON-able metadata."""
        arrays = {
            "window_raw": self.raw,
            "window_cache_rows": self.cache_rows,
            "window_cache_scores": self.cache_scores,
            "window_floor": self.floor,
            "window_born": self.born,
        }
        meta = {"query_ids": self.query_ids, "answers": self.answers, "order": list(self.order)}
        return arrays, meta

    @classmethod
    def from_state(
        cls,
        arrays: dict[str, np.ndarray],
        meta: dict,
        k: int,
        capacity: int,
        now: tuple[float, float] = (np.nan, np.nan),
    ) -> ValidationWindow:
        """The window :meth:`to_state` recorded; its capacity must be ``capacity``."""
        saved = arrays["window_raw"].shape[0]
        if saved != capacity:
            raise ValueError(
                f"the checkpoint's validation window holds {saved} queries, the configuration "
                f"says {capacity}; start from a fresh state or keep the size"
            )
        window = cls(capacity, arrays["window_raw"].shape[1], k)
        window.raw[:] = arrays["window_raw"]
        window.cache_rows[:] = arrays["window_cache_rows"]
        window.cache_scores[:] = arrays["window_cache_scores"]
        window.floor[:] = arrays["window_floor"]
        window.born[:] = arrays.get("window_born", now)
        window.query_ids = list(meta["query_ids"])
        window.answers = [dict(a) for a in meta["answers"]]
        window.order.extend(meta["order"])
        window.slot_of = {q: i for i, q in enumerate(window.query_ids) if q is not None}
        window._free = [i for i in range(capacity - 1, -1, -1) if window.query_ids[i] is None]
        for slot, answers in enumerate(window.answers):
            if window.query_ids[slot] is not None:
                for doc_id in answers:
                    window.answer_slots.setdefault(doc_id, set()).add(slot)
        window._unit_stale = list(window.slot_of.values())
        return window

    @property
    def unit(self) -> np.ndarray:
        """Unit query vectors by slot (normalised when first needed, in bulk)."""
        if self._unit_stale:
            slots = np.array(self._unit_stale, dtype=np.int64)
            self._unit_stale = []
            self._unit[slots] = unit_rows(self.raw[slots])[0]
        return self._unit

    def __len__(self) -> int:
        return len(self.slot_of)

    def add(
        self,
        query_id: str,
        vector: np.ndarray,
        doc_id: str,
        weight: float,
        born: tuple[float, float] = (np.nan, np.nan),
    ) -> tuple[str, np.ndarray, dict[str, float], tuple[float, float]] | None:
        """Record a validation click; returns the query it evicted, if the window was full.

        A query keeps the embedding (and the time ``born``) of its first click; later clicks add
        answers (weights add up). The evicted query comes as (id, vector, answers, born).
        """
        slot = self.slot_of.get(query_id)
        evicted = None
        if slot is None:
            if not self._free:
                evicted = self._evict()
            slot = self._free.pop()
            self.slot_of[query_id] = slot
            self.order.append(query_id)
            self.query_ids[slot] = query_id
            self._epochs += 1
            self.epoch[slot] = self._epochs
            self.raw[slot] = vector
            self.born[slot] = born
            self._unit_stale.append(slot)
            self.answers[slot] = {}
            self.floor[slot] = np.inf
            self.cache_rows[slot] = -1
            self.cache_scores[slot] = -np.inf
        answers = self.answers[slot]
        answers[doc_id] = answers.get(doc_id, 0.0) + weight
        self.answer_slots.setdefault(doc_id, set()).add(slot)
        return evicted

    def _evict(self) -> tuple[str, np.ndarray, dict[str, float], tuple[float, float]]:
        query_id = self.order.popleft()
        slot = self.slot_of.pop(query_id)
        answers = self.answers[slot]
        for doc_id in answers:
            slots = self.answer_slots.get(doc_id)
            if slots is not None:
                slots.discard(slot)
                if not slots:
                    del self.answer_slots[doc_id]
        born = self.born[slot]
        out = (query_id, self.raw[slot].copy(), answers, (float(born[0]), float(born[1])))
        self.query_ids[slot] = None
        self.answers[slot] = {}
        self.floor[slot] = np.inf
        self._free.append(slot)
        return out

    def active_slots(self) -> np.ndarray:
        """Slots holding a query, in arrival order."""
        return np.array([self.slot_of[q] for q in self.order], dtype=np.int64)

    # --- the caches ---------------------------------------------------------------------------

    def forget(self, rows: np.ndarray) -> None:
        """Documents that are no longer untouched (nudged, deleted, replaced) leave every cache."""
        if len(rows) == 0:
            return
        hit = np.isin(self.cache_rows, rows)
        self.cache_rows[hit] = -1
        self.cache_scores[hit] = -np.inf

    def forget_answer(self, slot: int, row: int) -> None:
        """A document became an answer of the query in ``slot``: it is no competitor there."""
        if self.floor[slot] == np.inf:
            return  # a cache never filled (a new query) holds nothing to forget
        hit = self.cache_rows[slot] == row
        self.cache_rows[slot, hit] = -1
        self.cache_scores[slot, hit] = -np.inf

    def offer(self, rows: np.ndarray, units: np.ndarray, ids: list[str]) -> None:
        """New untouched documents: each enters the caches of queries it scores ``floor`` for."""
        slots = self.active_slots()
        slots = slots[~np.isposinf(self.floor[slots])]
        if len(rows) == 0 or len(slots) == 0:
            return
        scores = self.unit[slots] @ units.T
        scores[scores < self.floor[slots][:, None]] = -np.inf
        for j, doc_id in enumerate(ids):
            for slot in self.answer_slots.get(doc_id, ()):
                scores[np.flatnonzero(slots == slot), j] = -np.inf
        self._merge(slots, np.broadcast_to(rows, scores.shape), scores)

    def _merge(self, slots: np.ndarray, rows: np.ndarray, scores: np.ndarray) -> None:
        all_rows = np.concatenate([self.cache_rows[slots], rows], axis=1)
        all_scores = np.concatenate([self.cache_scores[slots], scores.astype(np.float32)], axis=1)
        order = np.argsort(-all_scores, axis=1, kind="stable")
        all_rows = np.take_along_axis(all_rows, order, axis=1)
        all_scores = np.take_along_axis(all_scores, order, axis=1)
        kept, dropped = all_scores[:, : self.width], all_scores[:, self.width :]
        # Truncation: the best score dropped becomes the floor (nothing above it is missing).
        if dropped.shape[1]:
            best_dropped = dropped[:, 0].astype(np.float64)
            raise_to = np.isfinite(best_dropped)
            self.floor[slots[raise_to]] = np.maximum(
                self.floor[slots[raise_to]], best_dropped[raise_to]
            )
        self.cache_rows[slots] = np.where(np.isfinite(kept), all_rows[:, : self.width], -1)
        self.cache_scores[slots] = kept

    def refresh(
        self, slots: np.ndarray, originals: np.ndarray, untouched: np.ndarray, row_of
    ) -> None:
        """A pass over the corpus for ``slots``: their caches are rebuilt from scratch.

        ``untouched`` flags the rows of ``originals`` that may compete; ``row_of(doc_id)`` gives a
        document's row (or None), to leave out each query's answers.

        Each query keeps its best ``width + 1`` scores so far; only scores above the last of them
        can matter, and after the first small block few do, so the pass costs the product and one
        comparison per score, not a selection over every score.
        """
        if len(slots) == 0:
            return
        n = len(untouched)
        n_q = len(slots)
        keep = self.width + 1
        best = np.full((n_q, keep), -np.inf, dtype=np.float32)
        best_rows = np.full((n_q, keep), -1, dtype=np.int64)
        cells = [
            (i, row)
            for i, slot in enumerate(slots)
            for doc_id in self.answers[slot]
            if (row := row_of(doc_id)) is not None
        ]
        answer_q = np.array([c[0] for c in cells], dtype=np.int64)
        answer_r = np.array([c[1] for c in cells], dtype=np.int64)
        by_row = np.argsort(answer_r, kind="stable")
        answer_q, answer_r = answer_q[by_row], answer_r[by_row]
        # Documents by queries, so that each query's best over a block is a reduction down
        # contiguous rows; the block is sized like fine_tune's corpus pass (see _PASS_CELLS), and
        # its tables are reused, not faulted in afresh for every block.
        v_t = np.ascontiguousarray(self.unit[slots].T)
        block = max(256, _PASS_CELLS // max(n_q, 1))
        # The first block may be the bigger one when there are many queries.
        table_buffer = np.empty((min(max(block, _FIRST_BLOCK), n), n_q), dtype=np.float32)
        threshold = best[:, -1].copy()
        start = 0
        first = True
        while start < n:
            # The first block is small: it sets each query's threshold before the big ones come.
            stop = min(start + (_FIRST_BLOCK if first else block), n)
            # Every document of the block is scored and the ones that may not compete (nudged,
            # deleted) are masked after: whole rows of the table, cheaper than gathering the
            # untouched rows into a copy first.
            table = np.matmul(originals[start:stop], v_t, out=table_buffer[: stop - start])
            table[~untouched[start:stop]] = -np.inf
            lo, hi = np.searchsorted(answer_r, [start, stop])
            table[answer_r[lo:hi] - start, answer_q[lo:hi]] = -np.inf
            if first and stop - start > keep:
                # Every score beats -inf: each query's best `keep` directly.
                r = np.argpartition(-table, keep - 1, axis=0)[:keep].ravel()
                q = np.tile(np.arange(n_q), keep)
                scores = table[r, q]
            else:
                q, r, scores = _above(table, threshold)
            first = False
            if len(q):
                # Only the queries with candidates are merged: later blocks have few of them.
                merged = np.unique(q)
                top, top_rows = _merge_top(
                    best[merged],
                    best_rows[merged],
                    np.searchsorted(merged, q),
                    r + start,
                    scores,
                    keep,
                )
                best[merged], best_rows[merged] = top, top_rows
                threshold[merged] = top[:, -1]
            start = stop
        self.cache_rows[slots] = np.where(np.isfinite(best[:, :-1]), best_rows[:, :-1], -1)
        self.cache_scores[slots] = best[:, :-1]
        # The best score left out: every untouched document above it is cached.
        self.floor[slots] = best[:, -1].astype(np.float64)

    def others(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` cached scores of each slot, and which slots need a pass first."""
        scores = self.cache_scores[slots]
        valid = np.isfinite(scores).sum(axis=1)
        floor = self.floor[slots]
        # Never filled, or fewer than k left while documents may exist below floor.
        stale = np.isposinf(floor) | ((valid < self.k) & (floor > -np.inf))
        top = -np.sort(-scores, axis=1)[:, : self.k]
        return top, stale
