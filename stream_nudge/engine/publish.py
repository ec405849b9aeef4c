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
    """The updates that the changes since the last publication call for.

    Candidates are the rows the document table's change log lists since this publisher's mark,
    every nudged row after a change of gamma, and the rows forced out (``publish.initial``).
    """

    def __init__(self, method: str, similarity: str, min_change: float, encoding: str):
        self.method = method
        self.similarity = similarity
        self.min_change = min_change
        self.encoding = encoding
        self.mark = 0  # in the document table's change log: what was looked at
        self.forced: set[int] = set()  # rows to publish whatever they moved
        self.gamma_changed = False  # every nudged document is a candidate

    def force(self, row: int) -> None:
        """Publish ``row`` at the next publication, whatever it moved."""
        self.forced.add(row)

    def forget(self, row: int) -> None:
        """A deleted document: nothing to publish for it (its tombstone is the engine's)."""
        self.forced.discard(row)

    def publish(self, docs: DocumentTable, gamma: float, generation: int) -> Updates | None:
        """The updates for everything noted since the last call, with generations from
        ``generation + 1`` on; None when nothing moved enough."""
        rows = docs.changes.since(self.mark)
        self.mark = docs.changes.mark
        if self.gamma_changed:
            rows = np.union1d(rows, docs.nudged_rows())
        self.gamma_changed = False
        forced, self.forced = self.forced, set()
        if len(rows) == 0:
            return None
        rows = rows[docs.alive[rows]]
        seen, published = docs.last_published(rows)
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
            rows, seen, must = rows[keep], seen[keep], must[keep]
        if len(rows) == 0:
            return None
        current = fine_tuned(docs, rows, gamma, self.method)
        baseline = np.empty(current.shape, dtype=np.float64)
        baseline[seen] = published
        baseline[~seen] = docs.originals[rows[~seen]]
        moved = np.linalg.norm(current.astype(np.float64) - baseline, axis=1)
        emitted = np.flatnonzero(must | (moved > self.min_change))
        if len(emitted) == 0:
            return None
        vectors = current[emitted]
        generations = generation + 1 + np.arange(len(emitted), dtype=np.int64)
        chosen = rows[emitted]
        docs.note_published(chosen, vectors)
        return Updates(
            [docs.ids[r] for r in chosen.tolist()],
            vectors,
            generations,
            self.method,
            gamma,
            self.similarity,
            self.encoding,
        )

    def to_state(self, docs: DocumentTable | None) -> dict:
        changed = docs.changes.since(self.mark).tolist() if docs is not None else []
        return {
            "changed": changed,
            "forced": sorted(self.forced),
            "gamma_changed": self.gamma_changed,
        }

    def restore(self, meta: dict, docs: DocumentTable | None) -> None:
        """The state :meth:`to_state` recorded; ``docs`` (restored first) gets the changes this
        publisher had not looked at back in its change log."""
        if docs is not None:
            self.mark = docs.changes.mark
            docs.changes.touch(np.array(meta["changed"], dtype=np.int64))
        self.forced = set(meta["forced"])
        self.gamma_changed = bool(meta["gamma_changed"])
