"""The query sums: one slot per document that some training click reached.

A million documents of which a few thousand are clicked need a few thousand sums, not a million:
:class:`SumSlots` keeps them in tables indexed by *slot*, which the document table assigns to rows
the first time a click reaches them and takes back when the document is deleted. Beside each sum
a slot holds the clicks applied, the time the sum is expressed at (decay), what was last published
for the document, and the cached geometry a selection of gamma needs
(:class:`~stream_nudge.engine.geometry_cache.SlotGeometry`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stream_nudge.engine.geometry_cache import SlotGeometry, grown, wide

__all__ = ["Decay", "SumSlots"]

# Sum rows updated at once: 64 float64 rows of d = 384 are 192 KiB, within a core's L2 cache.
_ROWS_AT_ONCE = 64
# The tables saved and restored, with the value an unused slot holds.
_SAVED = {"sums": 0.0, "clicks": 0, "row_of_slot": -1, "stamps": math.nan, "has_published": False}


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


class SumSlots:
    """Query sums by slot (see the module docstring).

    Attributes
    ----------
    sums : float64 [capacity, dim]
        ``G_j``: the weighted sum of training query embeddings of the document in the slot.
    clicks : int64 [capacity]
        Training pairs applied to the document.
    moving : bool [capacity]
        Whether the slot's sum is non-zero, kept with the sums so that asking costs no pass over
        them (derived: recomputed by :meth:`recount` after the sums are set from outside).
    stamps : float64 [capacity, 2]
        With a :class:`Decay`: the (event count, seconds) time each sum is expressed at.
    row_of_slot : int64 [capacity]
        The document row holding the slot (-1: free).
    published, has_published : float32 [capacity, dim], bool [capacity]
        What was last published for the document. Like the geometry cache's two ``[slots, dim]``
        tables, ``published`` is grown to the capacity only when used: ingest before the first
        selection never does, and growing it with the sums would copy (and fault in) as much
        memory again as growing the sums does.
    """

    def __init__(self, dim: int, capacity: int, decay: Decay | None = None):
        self.decay = decay
        self.sums = np.zeros((capacity, dim), dtype=np.float64)
        self.clicks = np.zeros(capacity, dtype=np.int64)
        self.moving = np.zeros(capacity, dtype=bool)
        self.stamps = np.full((capacity, 2), math.nan)
        self.row_of_slot = np.full(capacity, -1, dtype=np.int64)
        self._published = np.zeros((0, dim), dtype=np.float32)
        self.has_published = np.zeros(capacity, dtype=bool)
        self.geometry = SlotGeometry(dim, capacity)
        self.free: list[int] = []
        self.used = 0  # slots [0, used) have been handed out at least once

    @property
    def published(self) -> np.ndarray:
        return wide(self, "_published", len(self.clicks))

    # --- state ----------------------------------------------------------------------------------

    def to_state(self) -> dict[str, np.ndarray]:
        s = self.used
        arrays = {name: getattr(self, name)[:s] for name in _SAVED}
        arrays["published"] = self.published[:s]
        arrays["free_slots"] = np.array(self.free, dtype=np.int64)
        return arrays

    def restore(self, arrays: dict[str, np.ndarray], limit: int, now: tuple[float, float]) -> None:
        """Take the slots :meth:`to_state` recorded (into an empty instance). Checkpoints from
        before decay hold no stamps: their sums count as of ``now``."""
        s = len(arrays["clicks"])
        self.take(s, limit)
        for name in _SAVED:
            getattr(self, name)[:s] = arrays.get(name, now)
        self.published[:s] = arrays["published"]
        self.free = arrays["free_slots"].tolist()
        self.recount()

    # --- allocation ---------------------------------------------------------------------------

    def take(self, count: int, limit: int) -> np.ndarray:
        """``count`` unused slots: freed ones first (the last freed first), then fresh ones.
        ``limit`` bounds the growth: no more slots than rows can be in use."""
        reused = self.free[: -count - 1 : -1]
        del self.free[len(self.free) - len(reused) :]
        fresh = count - len(reused)
        if self.used + fresh > len(self.clicks):
            # Four times, but never beyond the limit. Each growth copies the float64 sums (and
            # faults in the pages it copies to), the biggest cost of a click stream's first pass:
            # growing by 4 copies a third of the final size in all, doubling copies all of it.
            # The idle capacity costs address space only: np.zeros takes pages the kernel
            # provides when first written.
            capacity = max(self.used + fresh, min(4 * self.used, limit))
            for name, fill in _SAVED.items():
                setattr(self, name, grown(getattr(self, name), capacity, fill))
            self.moving = grown(self.moving, capacity, False)
            self.geometry.grow(capacity)
        out = np.empty(count, dtype=np.int64)
        out[: len(reused)] = reused
        out[len(reused) :] = np.arange(self.used, self.used + fresh)
        self.used += fresh
        return out

    def release(self, slot: int) -> None:
        """The slot zeroed and free for another row."""
        for name, fill in _SAVED.items():
            getattr(self, name)[slot] = fill
        self.moving[slot] = False
        self.geometry.forget(np.array([slot]))
        self.free.append(slot)

    # --- one slot -------------------------------------------------------------------------------

    def set(self, slot: int, total: np.ndarray, clicks: int, stamp, published) -> None:
        """Make the slot hold exactly these (``published`` None: nothing published)."""
        self.sums[slot] = total
        self.clicks[slot] = clicks
        self.stamps[slot] = stamp
        self.moving[slot] = bool(np.any(total != 0.0))
        self.has_published[slot] = published is not None
        if published is not None:
            self.published[slot] = published
        self.geometry.forget(np.array([slot]))

    # --- adding clicks --------------------------------------------------------------------------

    def add(self, slots, weights, vectors, times, now, origin: float):
        """``G[slot] += w * q`` for each (slot, w, q), in float64, in input order per slot; see
        :meth:`DocumentTable.add <stream_nudge.engine.state.DocumentTable.add>`.

        Returns the slots touched (each once, ascending) and, for each, whether it moved (its sum
        was non-zero) before and after.
        """
        # In rounds: round r adds each slot's r-th contribution (in input order), so within a
        # round the slots are distinct and one fancy-indexed += does it; each slot's additions
        # still happen in event order. Cheaper than add.at, and most slots need only round 0.
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
        self.geometry.forget(touched)
        return touched, before, after

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
        self.geometry.forget(np.arange(len(self.moving)))
        self.moving[:] = False
        self.moving[: self.used] = np.any(self.sums[: self.used] != 0.0, axis=1)

    def moving_rows(self) -> np.ndarray:
        """The rows of the slots whose sums are non-zero, in row order."""
        used = slice(0, self.used)
        slots = np.flatnonzero((self.row_of_slot[used] >= 0) & self.moving[used])
        return np.sort(self.row_of_slot[slots])
