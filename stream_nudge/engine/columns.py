"""The score tables a selection of gamma keeps: one row per window slot, one column per nudged
document.

:class:`ScoreColumns` holds the tables (``v . d``, ``v . g``, and for NUDGE-N ``v . z``, float32)
and which document each column belongs to, with the sum slot and change-log version its values
were computed from. Columns are kept in the order the documents first entered; a column that
leaves is filled by the last one. :meth:`ScoreColumns.sync` brings them to the documents nudged
now and says which columns need new products; the products themselves are the selection cache's
(:mod:`stream_nudge.engine.scores`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ScoreColumns"]

# Tables grow by this factor past the columns needed.
_GROWTH = 1.25
# Per-column bookkeeping, moved and grown with the tables' columns.
_PER_COLUMN = ("rows", "slots", "versions", "angles")


class ScoreColumns:
    """Score tables by (window slot, column) and what each column was computed from.

    Attributes
    ----------
    tables : list of float32 [window capacity, column capacity]
    n : int
        Columns in use: ``[0, n)``.
    rows, slots, versions : int64 [column capacity]
        Each column's document row, and that row's sum slot and change-log version when its
        values were computed.
    angles : float64 [column capacity]
        NUDGE-N: each column's rotation angle (kept current by the selection cache).
    """

    def __init__(self, capacity: int, n_tables: int):
        self.n = 0
        self.rows = np.zeros(0, dtype=np.int64)
        self.slots = np.zeros(0, dtype=np.int64)
        self.versions = np.zeros(0, dtype=np.int64)
        self.angles = np.zeros(0)
        self.tables = [np.zeros((capacity, 0), dtype=np.float32) for _ in range(n_tables)]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tables)

    def sync(self, docs, nudged: np.ndarray, where: np.ndarray, all_columns: float):
        """Bring the columns to the nudged documents ``nudged`` (rows of the DocumentTable
        ``docs``; ``where[row]`` is a row's place in ``nudged`` or -1).

        Returns the stale columns' old values ``(tables..., angles)`` over all slots, or None when
        more than the share ``all_columns`` of the columns changed (every query is recomputed
        then anyway), and the columns whose values are new (modified, then added).
        """
        n = self.n
        slots = docs.slot_of[nudged]
        versions = docs.changes.versions[nudged]
        pos = where[self.rows[:n]]
        alive = pos >= 0
        same = alive.copy()
        same[alive] = (self.slots[:n][alive] == slots[pos[alive]]) & (
            self.versions[:n][alive] == versions[pos[alive]]
        )
        stale = np.flatnonzero(~same)
        old = None
        if len(stale) + len(nudged) - alive.sum() <= all_columns * max(len(nudged), 1):
            old = [t[:, stale].copy() for t in self.tables] + [self.angles[stale].copy()]
        removed = np.flatnonzero(~alive)
        modified = np.flatnonzero(alive & ~same)
        # Fill the holes the removed columns leave with the last surviving columns.
        m = n - len(removed)
        holes = removed[removed < m]
        movers = np.setdiff1d(np.arange(m, n), removed)
        if len(holes):
            for t in self.tables:
                t[:, holes] = t[:, movers]
            for name in _PER_COLUMN:
                arr = getattr(self, name)
                arr[holes] = arr[movers]
            moved_to = np.arange(n)
            moved_to[movers] = holes
            modified = moved_to[modified]
        in_cache = np.zeros(docs.n_rows, dtype=bool)
        in_cache[self.rows[:m]] = True
        added = nudged[~in_cache[nudged]]
        total = m + len(added)
        if total > self.tables[0].shape[1]:
            cap = max(total, int(total * _GROWTH))
            self.tables = [_widened(t, cap) for t in self.tables]
            for name in _PER_COLUMN:
                setattr(self, name, _widened(getattr(self, name), cap))
        self.rows[m:total] = added
        self.n = total
        fresh = np.concatenate([modified, np.arange(m, total)])
        fresh_rows = self.rows[fresh]
        self.slots[fresh] = docs.slot_of[fresh_rows]
        self.versions[fresh] = docs.changes.versions[fresh_rows]
        return old, fresh


def _widened(array: np.ndarray, columns: int) -> np.ndarray:
    """``array`` with room for ``columns`` along its last axis."""
    out = np.zeros((*array.shape[:-1], columns), dtype=array.dtype)
    out[..., : array.shape[-1]] = array
    return out
