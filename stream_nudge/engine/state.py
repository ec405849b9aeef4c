"""Per-document state: original embeddings, the id <-> row map, and each row's query-sum slot.

The corpus lives in one float32 array of unit rows. Query sums exist only for documents some
training click touched, in a second, much smaller table (:class:`~stream_nudge.engine.slots.SumSlots`),
so that a million documents of which a few thousand are clicked cost little more than their
embeddings.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from stream_nudge.core.geometry import unit_rows
from stream_nudge.engine.changes import ChangeLog
from stream_nudge.engine.geometry_cache import grown
from stream_nudge.engine.slots import Decay, SumSlots

__all__ = ["DocumentState", "DocumentTable"]

# Arrays grow by this factor: amortised O(1) appends, and at most half the capacity idle (doubling
# would leave up to all of it idle, which a million 384-d documents feel as 1.5 GB).
_GROWTH = 1.5


class DocumentState(NamedTuple):
    """One document's whole state in the table: its unit original (float32), its query sum
    (float64; None if no training click ever reached it), the clicks applied, the time its sum is
    expressed at (decay), and what was last published for it (None if nothing)."""

    original: np.ndarray
    sum: np.ndarray | None
    clicks: int
    stamp: tuple[float, float]
    published: np.ndarray | None


class DocumentTable:
    """Documents by row, each with a slot of :attr:`slots` once a training click reaches it.

    Attributes
    ----------
    originals : float32 [capacity, dim]
        Unit-normalised original embeddings (row ``r`` is valid where ``alive[r]``).
    slot_of : int64 [capacity]
        The row's slot in :attr:`slots` (-1: no click ever reached it).
    slots : SumSlots
        The query sums, clicks, decay stamps and last published vectors, by slot.
    changes : ChangeLog
        Every change of a row (original set, clicks added, deleted), for whoever keeps something
        derived from documents: the publisher, the selector and its caches.
    originals_log, published_log : ChangeLog
        The rows whose original was set, and those something was published for: a changelog
        writes an original only when it is new, and a publication changes no derived value (it
        does not touch :attr:`changes`, whose versions the selection cache compares).
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
        self.slots = SumSlots(dim, slot_capacity, decay)
        self.changes = ChangeLog(capacity)
        self.originals_log = ChangeLog(capacity)
        self.published_log = ChangeLog(capacity)

    # --- state ----------------------------------------------------------------------------------

    def to_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """The table as named arrays and JSON-able metadata (caches left out: they are derived)."""
        n = self.n_rows
        arrays = {
            "originals": self.originals[:n],
            "alive": self.alive[:n],
            "slot_of": self.slot_of[:n],
            "free_rows": np.array(self.free_rows, dtype=np.int64),
            **self.slots.to_state(),
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
        n = len(arrays["alive"])
        if n > len(table.alive):
            table._grow_rows(n)
        src = arrays["originals"]
        if (
            src.shape == table.originals.shape
            and src.dtype == table.originals.dtype
            and src.flags.c_contiguous
            and src.flags.writeable
        ):
            table.originals = src  # a restore's largest array: taken over, not copied
        else:
            table.originals[:n] = src
        table.alive[:n] = arrays["alive"]
        table.slot_of[:n] = arrays["slot_of"]
        table.n_rows = n
        table.ids[:n] = meta["ids"]
        table.row_of = {doc_id: row for row, doc_id in enumerate(meta["ids"]) if doc_id is not None}
        table.free_rows = arrays["free_rows"].tolist()
        table.slots.restore(arrays, len(table.alive), now)
        return table

    # --- documents ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.row_of)

    def upsert(self, doc_id: str, unit: np.ndarray) -> tuple[int, bool]:
        """Store a (unit) original; returns ``(row, is_new)``. A known id keeps its query sum."""
        row = self.row_of.get(doc_id)
        if row is not None:
            self.originals[row] = unit
            self.slots.geometry.forget(self.slot_of[[row]])
            self.changes.touch(row)
            self.originals_log.touch(row)
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
        self.originals_log.touch(row)
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
        slot = int(self.slot_of[row])
        if slot >= 0:
            self.slots.release(slot)
            self.slot_of[row] = -1

    def _grow_rows(self, capacity: int) -> None:
        self.originals = grown(self.originals, capacity)
        self.alive = grown(self.alive, capacity, False)
        self.slot_of = grown(self.slot_of, capacity, -1)
        self.ids.extend([None] * (capacity - len(self.ids)))
        for log in (self.changes, self.originals_log, self.published_log):
            log.grow(capacity)

    # --- one document's whole state (a changelog record's content) ------------------------------

    def document(self, row: int) -> DocumentState:
        """Everything the table holds of the document in ``row`` (copies)."""
        slot = int(self.slot_of[row])
        if slot < 0:
            return DocumentState(self.originals[row].copy(), None, 0, (math.nan, math.nan), None)
        slots = self.slots
        published = slots.published[slot].copy() if slots.has_published[slot] else None
        return DocumentState(
            self.originals[row].copy(),
            slots.sums[slot].copy(),
            int(slots.clicks[slot]),
            (float(slots.stamps[slot, 0]), float(slots.stamps[slot, 1])),
            published,
        )

    def set_document(self, doc_id: str, state: DocumentState) -> int:
        """Make ``doc_id``'s state exactly ``state`` (what :meth:`document` gave); its row."""
        row, _ = self.upsert(doc_id, state.original)
        if state.sum is None:
            self._release_slot(row)
            return row
        slot = int(self.slots_for(np.array([row]))[0])
        self.slots.set(slot, state.sum, state.clicks, state.stamp, state.published)
        self.changes.touch(row)
        return row

    # --- query sums ---------------------------------------------------------------------------

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
            new = self.slots.take(len(need), len(self.alive))
            self.slot_of[need] = new
            self.slots.row_of_slot[new] = need
            slots = self.slot_of[rows]
        return slots

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
        touched, before, after = self.slots.add(
            self.slots_for(rows), weights, vectors, times, now, origin
        )
        touched_rows = self.slots.row_of_slot[touched]
        self.changes.touch(touched_rows)
        return touched_rows, before, after

    def last_published(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which ``rows`` had something published, and (for those) what."""
        slots = self.slot_of[rows]
        seen = slots >= 0
        seen[seen] = self.slots.has_published[slots[seen]]
        if not seen.any():  # the published table is not grown before it is needed
            return seen, np.zeros((0, self.dim), dtype=np.float32)
        return seen, self.slots.published[slots[seen]]

    def note_published(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """``vectors`` were published for ``rows`` (rows without a sum slot publish their
        original, which needs no record)."""
        slots = self.slot_of[rows]
        kept = slots >= 0
        self.slots.published[slots[kept]] = vectors[kept]
        self.slots.has_published[slots[kept]] = True
        self.published_log.touch(rows[kept])

    def geometry(self, rows: np.ndarray, planes: bool, vectors: bool = True):
        """What selecting gamma needs of nudged ``rows``, from the cache where still valid
        (:class:`~stream_nudge.engine.geometry_cache.SlotGeometry`).

        Returns ``(directions, tangents, angles, turnable)``: unit query-sum directions as float32
        (the precision the score products use); with ``planes``, NUDGE-N's rotation planes
        (float32 tangents, float64 angles, see :func:`~stream_nudge.core.geometry.rotation`) and which rows can turn; else
        None for those three. Without ``vectors`` the two ``[n, dim]`` tables are not gathered
        (None): a caller that needs them for a few rows only asks again.
        """
        return self.slots.geometry.get(self, rows, planes, vectors)

    def is_nudged(self, rows: np.ndarray) -> np.ndarray:
        """Whether each row's query sum is non-zero (the document moves)."""
        slots = self.slot_of[rows]
        out = np.zeros(len(rows), dtype=bool)
        has = slots >= 0
        out[has] = self.slots.moving[slots[has]]
        return out & self.alive[rows]

    def nudged_rows(self) -> np.ndarray:
        """All rows that move, in row order."""
        return self.slots.moving_rows()

    def directions(self, rows: np.ndarray) -> np.ndarray:
        """Unit query-sum directions of ``rows`` (float64; zero rows stay zero)."""
        sums = self.slots.sums[self.slot_of[rows]]
        return unit_rows(sums, out=np.empty_like(sums))[0]

    def untouched_mask(self) -> np.ndarray:
        """Alive rows that do not move, over ``[0, n_rows)``."""
        mask = self.alive[: self.n_rows].copy()
        mask[self.nudged_rows()] = False
        return mask
