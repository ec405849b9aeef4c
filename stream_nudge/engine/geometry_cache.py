"""What a selection of gamma needs of each nudged document, kept per sum slot until it changes.

A selection needs each nudged document's unit query-sum direction and, for NUDGE-N, its rotation
plane (tangent and angle) and whether it can turn. Between two selections most nudged documents do
not change, and deriving all of that again would cost a float64 pass over every one of them. So
:class:`SlotGeometry` keeps it per slot of the document table's sums, and the table forgets a
slot's values whenever its sum or original changes (or the slot changes hands). Each row's values
are computed on their own, so a cached value is the one a fresh computation would give, bit for
bit.
"""

from __future__ import annotations

import numpy as np

from stream_nudge.core.geometry import rotation, turnable

__all__ = ["SlotGeometry", "grown", "wide"]


def grown(array: np.ndarray, rows: int, fill=0) -> np.ndarray:
    """``array`` with ``rows`` rows, the new ones ``fill``: the per-slot and per-row tables
    grow by copying into a larger array.

    np.zeros gets fresh zeroed pages from the allocator (calloc): the tail is never written
    here, which for the query sums' tables is most of the cost of growing them.
    """
    bigger = np.zeros((rows, *array.shape[1:]), dtype=array.dtype)
    bigger[: array.shape[0]] = array
    if fill:
        bigger[array.shape[0] :] = fill
    return bigger


def wide(owner, name: str, rows: int) -> np.ndarray:
    """``owner``'s lazily grown table ``name``, grown to ``rows`` now if it is shorter."""
    table = getattr(owner, name)
    if len(table) < rows:
        table = grown(table, rows)
        setattr(owner, name, table)
    return table


class SlotGeometry:
    """Directions and rotation planes per sum slot (see the module docstring).

    The two ``[slots, dim]`` float32 tables are grown to the slot capacity only when first asked
    for: ingest before the first selection never does, and growing them with the sums would copy
    (and fault in) as much memory again as growing the sums does.
    """

    def __init__(self, dim: int, capacity: int):
        self.dir_ok = np.zeros(capacity, dtype=bool)
        self.plane_ok = np.zeros(capacity, dtype=bool)
        self.angle = np.zeros(capacity, dtype=np.float64)
        self.can_turn = np.zeros(capacity, dtype=bool)
        self._dir = np.zeros((0, dim), dtype=np.float32)
        self._tangent = np.zeros((0, dim), dtype=np.float32)

    def grow(self, capacity: int) -> None:
        self.dir_ok = grown(self.dir_ok, capacity, False)
        self.plane_ok = grown(self.plane_ok, capacity, False)
        self.angle = grown(self.angle, capacity)
        self.can_turn = grown(self.can_turn, capacity, False)

    def forget(self, slots: np.ndarray) -> None:
        """These slots' sums or originals changed (negative slots: none)."""
        slots = slots[slots >= 0]
        self.dir_ok[slots] = False
        self.plane_ok[slots] = False

    def _wide(self, name: str) -> np.ndarray:
        return wide(self, name, len(self.dir_ok))

    def get(self, docs, rows: np.ndarray, planes: bool, vectors: bool = True):
        """What selecting gamma needs of nudged ``rows`` of ``docs`` (a DocumentTable), computed
        where not cached; see :meth:`DocumentTable.geometry
        <stream_nudge.engine.state.DocumentTable.geometry>`."""
        slots = docs.slot_of[rows]
        stale = ~(self.plane_ok[slots] if planes else self.dir_ok[slots])
        directions_table = self._wide("_dir")
        tangents = self._wide("_tangent") if planes else None
        if stale.any():
            fresh_rows, fresh = rows[stale], slots[stale]
            directions = docs.directions(fresh_rows)
            directions_table[fresh] = directions
            self.dir_ok[fresh] = True
            if planes:
                originals = docs.originals[fresh_rows]
                plane = rotation(originals.astype(np.float64), directions)
                tangents[fresh] = plane.tangent
                self.angle[fresh] = plane.angle
                self.can_turn[fresh] = turnable(originals, directions)
                self.plane_ok[fresh] = True
        if not planes:
            return directions_table[slots] if vectors else None, None, None, None
        return (
            directions_table[slots] if vectors else None,
            tangents[slots] if vectors else None,
            self.angle[slots],
            self.can_turn[slots],
        )
