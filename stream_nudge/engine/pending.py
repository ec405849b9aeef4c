"""Training clicks on documents not seen yet, waiting for them.

A click may arrive before its document (the two come from different topics). It waits here and is
applied when the document arrives. It does not wait forever: a delete of its document id drops it
(the document it was for will not arrive), it expires after ``max_age_events`` events or
``max_age_seconds`` of event time when those are set, and the store holds at most ``max_clicks``
(beyond, a click is refused and the caller dead-letters it). Expired clicks and, at the end of a
replay, those still waiting are handed back with their query id so that the caller can report or
dead-letter them.
"""

from __future__ import annotations

import math
from collections import deque
from typing import NamedTuple

import numpy as np

__all__ = ["PendingClicks", "Waiting"]


class Waiting(NamedTuple):
    """One click waiting for its document."""

    query_id: str
    vector: np.ndarray  # its own copy (float32)
    weight: float
    when: tuple[float, float]  # (event count, seconds) for decay; NaNs without it
    born: tuple[float, float]  # (event count, seconds) when it arrived, for expiry
    seq: int  # arrival number: tells a live entry of the expiry queue from a stale one


class PendingClicks:
    """The waiting clicks by document id (see the module docstring)."""

    def __init__(
        self,
        max_clicks: int,
        max_age_events: float | None = None,
        max_age_seconds: float | None = None,
    ):
        self.max_clicks = max_clicks
        self.max_age_events = max_age_events
        self.max_age_seconds = max_age_seconds
        self.by_doc: dict[str, list[Waiting]] = {}
        # (document id, seq) in arrival order: the oldest waiting click is at the front.
        self._order: deque[tuple[str, int]] = deque()
        self._count = 0
        self._seq = 0

    def __len__(self) -> int:
        """Clicks waiting."""
        return self._count

    @property
    def documents(self) -> int:
        """Document ids with clicks waiting."""
        return len(self.by_doc)

    def add(
        self,
        doc_id: str,
        query_id: str,
        vector: np.ndarray,
        weight: float,
        when: tuple[float, float],
        born: tuple[float, float],
    ) -> bool:
        """Keep a click (a copy of ``vector``) until its document comes; False when full."""
        if self._count >= self.max_clicks:
            return False
        self._seq += 1
        # A copy: the vector may be a row of its whole batch's array, which must not stay alive
        # for one waiting click.
        entry = Waiting(query_id, np.array(vector, np.float32), weight, when, born, self._seq)
        self.by_doc.setdefault(doc_id, []).append(entry)
        self._order.append((doc_id, self._seq))
        self._count += 1
        return True

    def take(self, doc_id: str) -> list[Waiting]:
        """The clicks waiting for ``doc_id``, which has arrived; they wait no more."""
        waiting = self.by_doc.pop(doc_id, [])
        self._count -= len(waiting)
        self._trim()
        return waiting

    def drop(self, doc_id: str) -> int:
        """Forget the clicks waiting for ``doc_id`` (it was deleted); returns how many."""
        return len(self.take(doc_id))

    def expire(self, events: float, clock: float | None) -> list[tuple[str, Waiting]]:
        """Remove and return the clicks older than the configured ages at ``(events, clock)``."""
        out: list[tuple[str, Waiting]] = []
        if self.max_age_events is None and self.max_age_seconds is None:
            return out
        while self._order:
            doc_id, seq = self._order[0]
            waiting = self.by_doc.get(doc_id)
            if not waiting or waiting[0].seq != seq:
                self._order.popleft()  # taken or dropped already
                continue
            born_events, born_clock = waiting[0].born
            old = self.max_age_events is not None and events - born_events > self.max_age_events
            if not old and self.max_age_seconds is not None and clock is not None:
                old = math.isfinite(born_clock) and clock - born_clock > self.max_age_seconds
            if not old:
                break
            self._order.popleft()
            out.append((doc_id, waiting.pop(0)))
            self._count -= 1
            if not waiting:
                del self.by_doc[doc_id]
        return out

    def drain(self) -> list[tuple[str, Waiting]]:
        """Remove and return every waiting click, oldest first."""
        out = sorted(
            ((doc_id, w) for doc_id, waiting in self.by_doc.items() for w in waiting),
            key=lambda item: item[1].seq,
        )
        self.by_doc.clear()
        self._order.clear()
        self._count = 0
        return out

    def _trim(self) -> None:
        # Stale entries at the front of the queue go now, so that it does not grow with clicks
        # long applied; those further in go when they reach the front.
        while self._order and self._order[0][0] not in self.by_doc:
            self._order.popleft()

    # --- state ----------------------------------------------------------------------------------

    def to_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays and JSON-able metadata, oldest click first."""
        items = sorted(
            ((doc_id, w) for doc_id, waiting in self.by_doc.items() for w in waiting),
            key=lambda item: item[1].seq,
        )
        arrays = {
            "pending_seqs": np.array([w.seq for _, w in items], dtype=np.int64),
            "pending_weights": np.array([w.weight for _, w in items], dtype=np.float64),
            "pending_times": np.array([w.when for _, w in items], dtype=np.float64).reshape(-1, 2),
            "pending_born": np.array([w.born for _, w in items], dtype=np.float64).reshape(-1, 2),
        }
        if items:
            arrays["pending_vectors"] = np.stack([w.vector for _, w in items])
        meta = {
            "pending_ids": [doc_id for doc_id, _ in items],
            "pending_queries": [w.query_id for _, w in items],
            "pending_seq": self._seq,
        }
        return arrays, meta

    @classmethod
    def from_state(
        cls,
        arrays: dict[str, np.ndarray],
        meta: dict,
        now: tuple[float, float],
        max_clicks: int,
        max_age_events: float | None = None,
        max_age_seconds: float | None = None,
    ) -> PendingClicks:
        """The store :meth:`to_state` recorded (checkpoints from before query ids and arrival
        times were kept get ``""`` and ``now``)."""
        store = cls(max_clicks, max_age_events, max_age_seconds)
        ids = meta.get("pending_ids", [])
        queries = meta.get("pending_queries", [""] * len(ids))
        vectors, weights = arrays.get("pending_vectors"), arrays.get("pending_weights")
        times, born = arrays.get("pending_times"), arrays.get("pending_born")
        # Arrival numbers are kept (a changelog keys the clicks by them); checkpoints from before
        # they were get them anew, in order.
        seqs = arrays.get("pending_seqs")
        if seqs is None:
            seqs = np.arange(1, len(ids) + 1)
        for i, doc_id in enumerate(ids):
            when = (float(times[i, 0]), float(times[i, 1])) if times is not None else now
            arrived = (float(born[i, 0]), float(born[i, 1])) if born is not None else now
            seq = int(seqs[i])
            entry = Waiting(queries[i], vectors[i].copy(), float(weights[i]), when, arrived, seq)
            store.by_doc.setdefault(doc_id, []).append(entry)
            store._order.append((doc_id, seq))
            store._count += 1
        store._seq = int(meta.get("pending_seq", len(ids)))
        return store

    @property
    def last_seq(self) -> int:
        """The arrival number of the latest click ever added."""
        return self._seq

    def waiting(self) -> dict[int, tuple[str, Waiting]]:
        """Every waiting click by arrival number, with its document id."""
        return {w.seq: (doc_id, w) for doc_id, waiting in self.by_doc.items() for w in waiting}
