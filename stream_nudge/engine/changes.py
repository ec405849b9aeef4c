"""Which documents changed, for every reader that keeps something derived from them.

A document changes when its original is set or replaced, when clicks reach its query sum, and
when it is deleted. :class:`ChangeLog` numbers those changes: it is a journal of rows, and a mark
is a position in it. A reader (the publisher, the gamma selector, a changelog writer) keeps its own
mark and asks :meth:`ChangeLog.since` for the rows changed after it; readers do not disturb each
other, and a reader that asks rarely gets each row once, however often it changed.

Each row's version is the journal position just after its latest change, so a row changed after
mark ``m`` exactly when its version is above ``m``. That gives two ways to answer: from the
journal's tail (cost: the changes since the mark), or, for a mark older than the journal keeps,
by comparing every row's version (cost: the corpus). The journal keeps at least as many entries as
there are rows, so only a reader that missed more changes than the corpus has rows pays the scan,
and by then a scan is no dearer than reading the journal would have been.

Versions are also what a cache of per-document values compares against (the selection cache
does): equal versions mean the row has not changed since the value was computed.

A deleted document's id leaves the table with it, so the log also keeps the ids deleted, by
position (:meth:`ChangeLog.deleted_since`): a changelog keyed by document id needs them for its
tombstones. They have no scan to fall back on, so a reader that needs them pins its mark
(:meth:`ChangeLog.pin`): the journal is never trimmed past a pinned mark, and holds at most what
changed since that reader last read.
"""

from __future__ import annotations

import bisect

import numpy as np

__all__ = ["ChangeLog"]

# The journal is trimmed (by half) once it holds more entries than this many, or than the rows.
_MIN_JOURNAL = 4096


class ChangeLog:
    """A journal of changed rows, with each row's version (see the module docstring)."""

    def __init__(self, capacity: int):
        self.versions = np.zeros(capacity, dtype=np.int64)
        self._journal: list[int] = []
        self._offset = 0  # the position of the journal's first entry
        self._deleted: list[tuple[int, str]] = []  # (position after the deletion, id), in order
        self._pinned: int | None = None

    @property
    def mark(self) -> int:
        """The position now: :meth:`since` of it is empty until something changes."""
        return self._offset + len(self._journal)

    def grow(self, capacity: int) -> None:
        if capacity > len(self.versions):
            bigger = np.zeros(capacity, dtype=np.int64)
            bigger[: len(self.versions)] = self.versions
            self.versions = bigger

    def touch(self, rows) -> None:
        """Record a change of ``rows`` (an int or an int array)."""
        if isinstance(rows, (int, np.integer)):
            self._journal.append(int(rows))
        else:
            if len(rows) == 0:
                return
            self._journal.extend(rows.tolist())
        self.versions[rows] = self.mark
        if len(self._journal) > max(_MIN_JOURNAL, 2 * len(self.versions)):
            self._trim(len(self._journal) // 2)

    def touch_deleted(self, row: int, doc_id: str) -> None:
        """Record the deletion of ``doc_id``, which was in ``row``."""
        self.touch(row)
        self._deleted.append((self.mark, doc_id))

    def pin(self, mark: int | None) -> None:
        """Keep everything after ``mark`` (None: nothing) until pinned elsewhere."""
        self._pinned = mark

    def _trim(self, count: int) -> None:
        if self._pinned is not None:
            count = min(count, self._pinned - self._offset)
        if count <= 0:
            return
        del self._journal[:count]
        self._offset += count
        keep = bisect.bisect_right(self._deleted, self._offset, key=lambda entry: entry[0])
        del self._deleted[:keep]

    def deleted_since(self, mark: int) -> list[str]:
        """The ids deleted after ``mark``, in order (an id deleted twice comes twice). LookupError
        when the journal no longer reaches back to ``mark`` (a reader of deletions pins it)."""
        if mark < self._offset:
            raise LookupError(f"the change log holds positions from {self._offset}, not {mark}")
        start = bisect.bisect_right(self._deleted, mark, key=lambda entry: entry[0])
        return [doc_id for _, doc_id in self._deleted[start:]]

    def since(self, mark: int) -> np.ndarray:
        """The rows changed after ``mark`` (a past :attr:`mark`), each once, in row order."""
        if mark >= self.mark:
            return np.zeros(0, dtype=np.int64)
        if mark >= self._offset:
            return np.unique(np.array(self._journal[mark - self._offset :], dtype=np.int64))
        return np.flatnonzero(self.versions > mark)
