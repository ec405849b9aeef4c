"""Training clicks on their way into the query sums.

The ingest loop buffers each training click (its document's row, weight, query vector and time)
and adds the buffer to the sums at once (:meth:`DocumentTable.add
<stream_nudge.engine.state.DocumentTable.add>`), before anything that could change what a row
means (a delete, an upsert of a new document, a selection).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ClickBuffer"]


class ClickBuffer:
    """Training clicks not yet added to the sums, in order: each click's row, weight, query
    vector and, with decay (``timed``), its time (event count, seconds).

    A click of the batch being processed keeps its vector as an index into the batch's vector
    array (``picks[k] >= 0``): three appends per click (four with decay), and one gather for the
    whole buffer when it is added. Any other click (a folded validation query, a click that
    waited for its document) brings its own vector, kept in ``own`` (``picks[k] = -1 - its
    index there``). Besides :meth:`add`, the engine's ingest loop appends to the lists itself (the
    hot path); every click has an entry in each list (in ``whens`` only when timed).
    """

    __slots__ = ("batch", "own", "picks", "rows", "timed", "weights", "whens")

    def __init__(self, timed: bool):
        self.timed = timed
        self.rows: list[int] = []
        self.weights: list[float] = []
        self.picks: list[int] = []
        self.whens: list[tuple[float, float]] = []
        self.own: list[np.ndarray] = []
        self.batch: np.ndarray | None = None  # the vectors of the batch being processed

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, row: int, weight: float, vector: np.ndarray, when: tuple[float, float]) -> None:
        """A click with a vector of its own."""
        self.rows.append(row)
        self.weights.append(weight)
        self.picks.append(-1 - len(self.own))
        self.own.append(vector)
        if self.timed:
            self.whens.append(when)

    def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Rows, weights, vectors and (with decay) times of the buffered clicks; empties it.

        The lists are emptied in place: appends bound to them before stay valid.
        """
        picks = np.array(self.picks, dtype=np.int64)
        if not self.own:
            vectors = self.batch[picks]
        else:
            # Every own vector is flat and of the stream's dimension: one concatenate is
            # several times cheaper than stack, which handles each array on its own.
            own = np.concatenate(self.own).reshape(len(self.own), -1)
            vectors = np.empty((len(picks), own.shape[1]), dtype=np.float32)
            from_batch = picks >= 0
            if from_batch.any():
                vectors[from_batch] = self.batch[picks[from_batch]]
            vectors[~from_batch] = own[-1 - picks[~from_batch]]
        rows = np.array(self.rows, dtype=np.int64)
        weights = np.array(self.weights, dtype=np.float64)
        times = np.array(self.whens, dtype=np.float64).reshape(-1, 2) if self.timed else None
        for part in (self.rows, self.weights, self.picks, self.whens, self.own):
            part.clear()
        return rows, weights, vectors, times

    def end_batch(self) -> None:
        """The batch's vector array is going: clicks still buffered (only if processing the
        batch stopped half way, with an exception) get copies of their vectors."""
        for k, pick in enumerate(self.picks):
            if pick >= 0:
                self.picks[k] = -1 - len(self.own)
                self.own.append(self.batch[pick].copy())
        self.batch = None
