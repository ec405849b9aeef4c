"""Per-document state: original embeddings, query sums, click counts, and the id <-> row map.

The corpus lives in one float32 array of unit rows. Query sums exist only for documents some
training click touched, in a second, much smaller table, so that a million documents of which a few
thousand are clicked cost little more than their embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from stream_nudge.core.geometry import unit_rows
from stream_nudge.engine.changes import ChangeLog
from stream_nudge.engine.geometry_cache import SlotGeometry, grown, wide

__all__ = ["Decay", "DocumentState", "DocumentTable"]

# Arrays grow by this factor: amortised O(1) appends, and at most half the capacity idle (doubling
# would leave up to all of it idle, which a million 384-d documents feel as 1.5 GB).
_GROWTH = 1.5
# Sum rows updated at once: 64 float64 rows of d = 384 are 192 KiB, within a core's L2 cache.
_ROWS_AT_ONCE = 64


class DocumentState(NamedTuple):
    """One document's whole state in the table: its unit original (float32), its query sum
    (float64; None if no training click ever reached it), the clicks applied, the time its sum is
    expressed at (decay), and what was last published for it (None if nothing)."""

    original: np.ndarray
    sum: np.ndarray | None
    clicks: int
    stamp: tuple[float, float]
    published: np.ndarray | None


@dataclass(frozen=True)
class Decay:
    """Clicks lose half their weight every ``half_life_events`` events and ``half_life_seconds``.

    A time is a pair (event count, event seconds); an unknown second (NaN: no time seen yet) ages
    nothing. A document moves toward the direction of its query sum, which no common factor
    changes, so a sum needs aging only when a click is added to it: each slot remembers the time
    its sum is expressed at (its *stamp*) and is brought forward then. That is exact (the sum is
    the same as if every click were discounted at every step) and costs nothing per event for
    the documents not clicked.

    >>> Decay(half_life_events=10.0).factors(np.array([0.0, 10.0, 20.0]), np.zeros(3))
    array([1.  , 0.5 , 0.25])
    """

    half_life_events: float | None = None
    half_life_seconds: float | None = None

    def factors(self, events_age: np.ndarray, seconds_age: np.ndarray) -> np.ndarray:
        halvings = np.zeros(np.shape(events_age), dtype=np.float64)
        if self.half_life_events is not None:
            age = np.nan_to_num(np.maximum(events_age, 0.0), nan=0.0)
            halvings += age / self.half_life_events
        if self.half_life_seconds is not None:
            age = np.nan_to_num(np.maximum(seconds_age, 0.0), nan=0.0)
            halvings += age / self.half_life_seconds
        return np.exp2(-halvings)


class DocumentTable:
    """Documents by row, with their training query sums.

    Attributes
    ----------
    originals : float32 [capacity, dim]
        Unit-normalised original embeddings (row ``r`` is valid where ``alive[r]``).
    sums : float64 [slot capacity, dim]
        ``G_j``: the weighted sum of training query embeddings of the document in that slot.
    clicks : int64 [slot capacity]
        Training pairs applied to the document.
    published : float32 [slot capacity, dim]
        What was last published for the document (where ``has_published``). Like the geometry
        cache's two ``[slots, dim]`` tables, it is grown to the slot capacity only when used: ingest
        before the first selection never does, and growing it with the sums would copy (and fault
        in) as much memory again as growing the sums does.
    moving : bool [slot capacity]
        Whether the slot's sum is non-zero, kept with the sums so that asking costs no pass over
        them (derived: recomputed by :meth:`recount` after the sums are set from outside).
    stamps : float64 [slot capacity, 2]
        With a :class:`Decay`: the (event count, seconds) time each sum is expressed at.

    Each slot also caches what a selection of gamma needs of its document (:meth:`geometry`,
    kept by :class:`~stream_nudge.engine.geometry_cache.SlotGeometry`), valid until its sum or
    original changes.
    """

    def __init__(
        self, dim: int, capacity: int = 1024, slot_capacity: int = 256, decay: Decay | None = None
    ):
        self.dim = dim
        self.decay = decay
        self.originals = np.zeros((capacity, dim), dtype=np.float32)
        self.alive = np.zeros(capacity, dtype=bool)
        self.slot_of = np.full(capacity, -1, dtype=np.int64)
        self.ids: list[str | None] = [None] * capacity
        self.row_of: dict[str, int] = {}
        self.free_rows: list[int] = []
        self.n_rows = 0
        self.sums = np.zeros((slot_capacity, dim), dtype=np.float64)
        self.clicks = np.zeros(slot_capacity, dtype=np.int64)
        self._published = np.zeros((0, dim), dtype=np.float32)
        self.has_published = np.zeros(slot_capacity, dtype=bool)
        self.moving = np.zeros(slot_capacity, dtype=bool)
        self.row_of_slot = np.full(slot_capacity, -1, dtype=np.int64)
        self.stamps = np.full((slot_capacity, 2), math.nan)
        self._geometry = SlotGeometry(dim, slot_capacity)
        # Every change of a row (original set, clicks added, deleted), for whoever keeps
        # something derived from documents: the publisher, the selector and its caches.
        self.changes = ChangeLog(capacity)
        self.free_slots: list[int] = []
        self.n_slots = 0

    # --- state ----------------------------------------------------------------------------------

    def to_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """The table as named arrays and JSON-able metadata (caches left out: they are derived)."""
        n, s = self.n_rows, self.n_slots
        arrays = {
            "originals": self.originals[:n],
            "alive": self.alive[:n],
            "slot_of": self.slot_of[:n],
            "sums": self.sums[:s],
            "clicks": self.clicks[:s],
            "published": self.published[:s],
            "has_published": self.has_published[:s],
            "row_of_slot": self.row_of_slot[:s],
            "stamps": self.stamps[:s],
            "free_rows": np.array(self.free_rows, dtype=np.int64),
            "free_slots": np.array(self.free_slots, dtype=np.int64),
        }
        return arrays, {"ids": self.ids[:n]}

    @classmethod
    def from_state(
        cls,
        arrays: dict[str, np.ndarray],
        meta: dict,
        decay: Decay | None = None,
        now: tuple[float, float] = (math.nan, math.nan),
    ) -> DocumentTable:
        """The table :meth:`to_state` recorded. Checkpoints from before decay hold no stamps:
        their sums count as of ``now``."""
        table = cls(arrays["originals"].shape[1], decay=decay)
        n, s = len(arrays["alive"]), len(arrays["clicks"])
        if n > len(table.alive):
            table._grow_rows(n)
        table.originals[:n] = arrays["originals"]
        table.alive[:n] = arrays["alive"]
        table.slot_of[:n] = arrays["slot_of"]
        table.n_rows = n
        table.ids[:n] = meta["ids"]
        table.row_of = {doc_id: row for row, doc_id in enumerate(meta["ids"]) if doc_id is not None}
        table.free_rows = arrays["free_rows"].tolist()
        while table.n_slots < s:
            table._new_slot()
        table.sums[:s] = arrays["sums"]
        table.clicks[:s] = arrays["clicks"]
        table.published[:s] = arrays["published"]
        table.has_published[:s] = arrays["has_published"]
        table.row_of_slot[:s] = arrays["row_of_slot"]
        table.stamps[:s] = arrays.get("stamps", now)
        table.free_slots = arrays["free_slots"].tolist()
        table.recount()
        return table

    # --- documents ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.row_of)

    def upsert(self, doc_id: str, unit: np.ndarray) -> tuple[int, bool]:
        """Store a (unit) original; returns ``(row, is_new)``. A known id keeps its query sum."""
        row = self.row_of.get(doc_id)
        if row is not None:
            self.originals[row] = unit
            self._geometry.forget(self.slot_of[[row]])
            self.changes.touch(row)
            return row, False
        if self.free_rows:
            row = self.free_rows.pop()
        else:
            if self.n_rows == len(self.alive):
                self._grow_rows(max(self.n_rows + 1, int(self.n_rows * _GROWTH)))
            row = self.n_rows
            self.n_rows += 1
        self.originals[row] = unit
        self.alive[row] = True
        self.ids[row] = doc_id
        self.row_of[doc_id] = row
        self.changes.touch(row)
        return row, True

    def delete(self, doc_id: str) -> int | None:
        """Forget a document and its query sum; returns its former row, or None if unknown."""
        row = self.row_of.pop(doc_id, None)
        if row is None:
            return None
        self.alive[row] = False
        self.ids[row] = None
        self.originals[row] = 0.0
        self._release_slot(row)
        self.free_rows.append(row)
        self.changes.touch_deleted(row, doc_id)
        return row

    def _release_slot(self, row: int) -> None:
        """The row's sum slot, if it has one, zeroed and free for another row."""
        slot = int(self.slot_of[row])
        if slot < 0:
            return
        self.sums[slot] = 0.0
        self.clicks[slot] = 0
        self.has_published[slot] = False
        self.moving[slot] = False
        self.stamps[slot] = math.nan
        self._geometry.forget(np.array([slot]))
        self.row_of_slot[slot] = -1
        self.free_slots.append(slot)
        self.slot_of[row] = -1

    # --- one document's whole state (a changelog record's content) ------------------------------

    def document(self, row: int) -> DocumentState:
        """Everything the table holds of the document in ``row`` (copies)."""
        slot = int(self.slot_of[row])
        if slot < 0:
            return DocumentState(self.originals[row].copy(), None, 0, (math.nan, math.nan), None)
        published = self.published[slot].copy() if self.has_published[slot] else None
        stamp = (float(self.stamps[slot, 0]), float(self.stamps[slot, 1]))
        return DocumentState(
            self.originals[row].copy(),
            self.sums[slot].copy(),
            int(self.clicks[slot]),
            stamp,
            published,
        )

    def set_document(self, doc_id: str, state: DocumentState) -> int:
        """Make ``doc_id``'s state exactly ``state`` (what :meth:`document` gave); its row."""
        row, _ = self.upsert(doc_id, state.original)
        if state.sum is None:
            self._release_slot(row)
            return row
        slot = int(self.slots_for(np.array([row]))[0])
        self.sums[slot] = state.sum
        self.clicks[slot] = state.clicks
        self.stamps[slot] = state.stamp
        self.moving[slot] = bool(np.any(state.sum != 0.0))
        self.has_published[slot] = state.published is not None
        if state.published is not None:
            self.published[slot] = state.published
        self._geometry.forget(np.array([slot]))
        self.changes.touch(row)
        return row

    def _grow_rows(self, capacity: int) -> None:
        self.originals = grown(self.originals, capacity)
        self.alive = grown(self.alive, capacity, False)
        self.slot_of = grown(self.slot_of, capacity, -1)
        self.ids.extend([None] * (capacity - len(self.ids)))
        self.changes.grow(capacity)

    # --- query sums ---------------------------------------------------------------------------

    @property
    def published(self) -> np.ndarray:
        return self._wide("_published")

    def _wide(self, name: str) -> np.ndarray:
        """The lazily grown ``[slot capacity, dim]`` table ``name``, grown to the capacity now."""
        return wide(self, name, len(self.clicks))

    def slots_for(self, rows: np.ndarray) -> np.ndarray:
        """The sum slot of each row, allocating slots for rows that have none yet.

        New slots go to the rows in order of first appearance (freed slots first, last freed
        first), as one slot at a time would, but with at most one growth of the tables.
        """
        slots = self.slot_of[rows]
        missing = slots < 0
        if missing.any():
            need, first = np.unique(rows[missing], return_index=True)
            need = need[np.argsort(first)]
            new = self._new_slots(len(need))
            self.slot_of[need] = new
            self.row_of_slot[new] = need
            slots = self.slot_of[rows]
        return slots

    def _new_slot(self) -> int:
        return int(self._new_slots(1)[0])

    def _new_slots(self, count: int) -> np.ndarray:
        """``count`` unused slots: freed ones first (the last freed first), then fresh ones."""
        reused = self.free_slots[: -count - 1 : -1]
        del self.free_slots[len(self.free_slots) - len(reused) :]
        fresh = count - len(reused)
        if self.n_slots + fresh > len(self.clicks):
            # Four times, but never beyond the documents' capacity (no more slots than rows can
            # be in use). Each growth copies the float64 sums (and faults in the pages it copies
            # to), the biggest cost of a click stream's first pass: growing by 4 copies a third of
            # the final size in all, doubling copies all of it. The idle capacity costs address
            # space only: np.zeros takes pages the kernel provides when first written.
            capacity = max(self.n_slots + fresh, min(4 * self.n_slots, len(self.alive)))
            self.sums = grown(self.sums, capacity)
            self.clicks = grown(self.clicks, capacity)
            self.has_published = grown(self.has_published, capacity, False)
            self.moving = grown(self.moving, capacity, False)
            self.row_of_slot = grown(self.row_of_slot, capacity, -1)
            self.stamps = grown(self.stamps, capacity, math.nan)
            self._geometry.grow(capacity)
        out = np.empty(count, dtype=np.int64)
        out[: len(reused)] = reused
        out[len(reused) :] = np.arange(self.n_slots, self.n_slots + fresh)
        self.n_slots += fresh
        return out

    def add(
        self,
        rows: np.ndarray,
        weights: np.ndarray,
        vectors: np.ndarray,
        times: np.ndarray | None = None,
        now: tuple[float, float] | None = None,
        origin: float = math.nan,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``G[row] += w * q`` for each (row, w, q), in float64.

        Returns the rows touched (each once) and, for each, whether it moved (its sum was non-zero)
        before and after.

        Contributions to one row are added in their input order, so the result depends only on
        the sequence of events, not on how they were batched. With a :class:`Decay`, ``times``
        holds each click's (event count, seconds) and ``now`` the present: the touched sums are
        aged to ``now`` and each click enters discounted by its own age. ``origin`` is the first
        second ever seen: clicks and sums from before any time was known count as of then, so
        that the result does not depend on whether they were added before or with the first
        timed click.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return rows, np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)
        slots = self.slots_for(rows)
        # In rounds: round r adds each slot's r-th contribution (in input order), so within a
        # round the slots are distinct and one fancy-indexed += does it; each row's additions
        # still happen in event order. Cheaper than add.at, and most rows need only round 0.
        order = np.argsort(slots, kind="stable")
        sorted_slots = slots[order]
        starts = np.flatnonzero(np.r_[True, sorted_slots[1:] != sorted_slots[:-1]])
        touched = sorted_slots[starts]
        sizes = np.diff(np.r_[starts, len(slots)])
        rank = np.arange(len(slots)) - np.repeat(starts, sizes)
        by_rank = order[np.argsort(rank, kind="stable")]
        bounds = np.r_[0, np.cumsum(np.bincount(rank))]
        weights = np.asarray(weights, dtype=np.float64)
        if self.decay is not None:
            weights = weights * self._age(touched, times, now, origin)
        if np.all(weights == 1.0):
            contrib = vectors  # float32, widened exactly by the float64 += below
        else:
            contrib = vectors.astype(np.float64)
            contrib *= weights[:, None]
        sums = self.sums
        after = np.empty(len(touched), dtype=bool)
        for r in range(len(bounds) - 1):
            take = by_rank[bounds[r] : bounds[r + 1]]
            targets, parts = slots[take], contrib[take]
            # Round 0 has each touched slot once, in slot order: touched's order.
            at = None if r == 0 else np.searchsorted(touched, targets)
            # A few rows at a time, so that they are still in cache when written back, and
            # whether each is non-zero now is read from the copy (-0.0 counts as zero, as
            # != 0.0 does).
            for a in range(0, len(targets), _ROWS_AT_ONCE):
                chunk = targets[a : a + _ROWS_AT_ONCE]
                block = sums[chunk]
                block += parts[a : a + _ROWS_AT_ONCE]
                sums[chunk] = block
                if at is None:
                    after[a : a + _ROWS_AT_ONCE] = block.any(axis=1)
                else:
                    after[at[a : a + _ROWS_AT_ONCE]] = block.any(axis=1)
        self.clicks[touched] += sizes
        before = self.moving[touched]
        self.moving[touched] = after
        self._geometry.forget(touched)
        touched_rows = self.row_of_slot[touched]
        self.changes.touch(touched_rows)
        return touched_rows, before, after

    def _age(self, slots, times: np.ndarray, now: tuple[float, float], origin: float) -> np.ndarray:
        """Bring ``slots``' sums forward to ``now``; return the clicks' discounts at ``now``."""
        now_events, now_seconds = now
        stamps = self.stamps[slots]
        stamp_seconds, click_seconds = stamps[:, 1], times[:, 1]
        if not math.isnan(origin):
            stamp_seconds = np.where(np.isnan(stamp_seconds), origin, stamp_seconds)
            click_seconds = np.where(np.isnan(click_seconds), origin, click_seconds)
        # A fresh slot's stamp is NaN in events too; its sum is zero, so any factor will do.
        events_age = np.nan_to_num(now_events - stamps[:, 0], nan=0.0)
        self.sums[slots] *= self.decay.factors(events_age, now_seconds - stamp_seconds)[:, None]
        self.stamps[slots, 0] = now_events
        # Seconds not known yet (NaN) stay unknown; known ones never go back to unknown.
        if not math.isnan(now_seconds):
            self.stamps[slots, 1] = now_seconds
        return self.decay.factors(now_events - times[:, 0], now_seconds - click_seconds)

    def recount(self) -> None:
        """Derive :attr:`moving` from the sums (after they were set from a snapshot)."""
        self._geometry.forget(np.arange(len(self.moving)))
        self.moving[:] = False
        self.moving[: self.n_slots] = np.any(self.sums[: self.n_slots] != 0.0, axis=1)

    def geometry(self, rows: np.ndarray, planes: bool, vectors: bool = True):
        """What selecting gamma needs of nudged ``rows``, from the cache where still valid
        (:class:`~stream_nudge.engine.geometry_cache.SlotGeometry`).

        Returns ``(directions, tangents, angles, turnable)``: unit query-sum directions as float32
        (the precision the score products use); with ``planes``, NUDGE-N's rotation planes
        (float32 tangents, float64 angles, see :func:`~stream_nudge.core.geometry.rotation`) and which rows can turn; else
        None for those three. Without ``vectors`` the two ``[n, dim]`` tables are not gathered
        (None): a caller that needs them for a few rows only asks again.
        """
        return self._geometry.get(self, rows, planes, vectors)

    def is_nudged(self, rows: np.ndarray) -> np.ndarray:
        """Whether each row's query sum is non-zero (the document moves)."""
        slots = self.slot_of[rows]
        out = np.zeros(len(rows), dtype=bool)
        has = slots >= 0
        out[has] = self.moving[slots[has]]
        return out & self.alive[rows]

    def nudged_rows(self) -> np.ndarray:
        """All rows that move, in row order."""
        slots = np.flatnonzero(
            (self.row_of_slot[: self.n_slots] >= 0) & self.moving[: self.n_slots]
        )
        return np.sort(self.row_of_slot[slots])

    def directions(self, rows: np.ndarray) -> np.ndarray:
        """Unit query-sum directions of ``rows`` (float64; zero rows stay zero)."""
        sums = self.sums[self.slot_of[rows]]
        return unit_rows(sums, out=np.empty_like(sums))[0]

    def untouched_mask(self) -> np.ndarray:
        """Alive rows that do not move, over ``[0, n_rows)``."""
        mask = self.alive[: self.n_rows].copy()
        mask[self.nudged_rows()] = False
        return mask
