"""Publishing: which documents need an update, and their fine-tuned embeddings.

The engine tells the :class:`Publisher` what happened (a document's sum or original changed, a
document must go out whatever it moved, gamma changed, a document was deleted); at the end of
each call the publisher turns that into updates: every candidate whose embedding moved more than
``min_change`` since its last published version (or since its original, if never published).
Embeddings are always derived from the original and the query sum, never from a previous nudged
vector.
"""

from __future__ import annotations

import numpy as np

from stream_nudge.core.geometry import nudge_m, nudge_n
from stream_nudge.engine.state import DocumentTable
from stream_nudge.messages import Updates

__all__ = ["Publisher", "fine_tuned"]


def fine_tuned(docs: DocumentTable, rows: np.ndarray, gamma: float, method: str) -> np.ndarray:
    """Current fine-tuned embeddings of ``rows``: derived from the originals and the sums."""
    out = docs.originals[rows].copy()
    if gamma == 0.0 or len(rows) == 0:
        return out
    moving = docs.is_nudged(rows)
    if not moving.any():
        return out
    r = rows[moving]
    originals = docs.originals[r].astype(np.float64)
    directions = docs.directions(r)
    if method == "nudge-m":
        out[moving] = nudge_m(originals, directions, gamma)
    else:
        out[moving] = nudge_n(originals, directions, gamma)
    return out


class Publisher:
    """What changed since the last publication, and the updates it calls for."""

    def __init__(self, method: str, similarity: str, min_change: float, encoding: str):
        self.method = method
        self.similarity = similarity
        self.min_change = min_change
        self.encoding = encoding
        self.changed: set[int] = set()  # rows whose sum or original changed
        self.forced: set[int] = set()  # rows to publish whatever they moved
        self.gamma_changed = False  # every nudged document is a candidate

    def forget(self, row: int) -> None:
        """A deleted document: nothing to publish for it (its tombstone is the engine's)."""
        self.changed.discard(row)
        self.forced.discard(row)

    def publish(self, docs: DocumentTable, gamma: float, generation: int) -> Updates | None:
        """The updates for everything noted since the last call, with generations from
        ``generation + 1`` on; None when nothing moved enough."""
        candidates = set(self.changed)
        if self.gamma_changed:
            candidates.update(docs.nudged_rows().tolist())
        self.changed.clear()
        self.gamma_changed = False
        forced, self.forced = self.forced, set()
        if not candidates:
            return None
        rows = np.fromiter(candidates, dtype=np.int64, count=len(candidates))
        rows.sort()
        rows = rows[docs.alive[rows]]
        slots = docs.slot_of[rows]
        seen = slots >= 0
        seen[seen] = docs.has_published[slots[seen]]
        must = (
            np.isin(rows, np.fromiter(forced, dtype=np.int64, count=len(forced)))
            if forced
            else np.zeros(len(rows), dtype=bool)
        )
        if gamma == 0.0:
            # At gamma 0 every embedding is its original, which search already has unless it was
            # published at another gamma: only those documents (and forced ones) can need an
            # update. Ingest before the first selection (most of a replay) stops here.
            keep = seen | must
            rows, slots, seen, must = rows[keep], slots[keep], seen[keep], must[keep]
        if len(rows) == 0:
            return None
        current = fine_tuned(docs, rows, gamma, self.method)
        baseline = np.empty(current.shape, dtype=np.float64)
        if seen.any():
            baseline[seen] = docs.published[slots[seen]]
        baseline[~seen] = docs.originals[rows[~seen]]
        moved = np.linalg.norm(current.astype(np.float64) - baseline, axis=1)
        emitted = np.flatnonzero(must | (moved > self.min_change))
        if len(emitted) == 0:
            return None
        vectors = current[emitted]
        generations = generation + 1 + np.arange(len(emitted), dtype=np.int64)
        chosen, slots = rows[emitted], slots[emitted]
        kept = slots >= 0
        docs.published[slots[kept]] = vectors[kept]
        docs.has_published[slots[kept]] = True
        return Updates(
            [docs.ids[r] for r in chosen.tolist()],
            vectors,
            generations,
            self.method,
            gamma,
            self.similarity,
            self.encoding,
        )

    def to_state(self) -> dict:
        return {
            "changed": sorted(self.changed),
            "forced": sorted(self.forced),
            "gamma_changed": self.gamma_changed,
        }

    def restore(self, meta: dict) -> None:
        self.changed = set(meta["changed"])
        self.forced = set(meta["forced"])
        self.gamma_changed = bool(meta["gamma_changed"])
