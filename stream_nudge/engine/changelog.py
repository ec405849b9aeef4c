"""The document table as a changelog: one record per document id, the latest one wins.

A record's key is the document id (UTF-8); its value is the document's whole state in the table
(:class:`~stream_nudge.engine.state.DocumentState`), or None for a deleted document (a Kafka
tombstone). Compacted by key, the records of a table's changes rebuild the table: applying them
in order to an empty table gives, document by document, the same originals, query sums, click
counts, sum times and published vectors (rows may differ: they are the table's own business).

:func:`records_since` turns what changed since a reader's mark into records (that reader pins
its mark in the change log, which then keeps the deleted ids for it); :func:`apply_records`
applies records to a table. Issue 18's runtime writes the first to a compacted topic at every
commit and reads it back on a restore.

The value, little-endian: a format byte (1), a flags byte (1: a query sum follows the original,
2: a published vector ends the record), the original (float32 x dim), then with a sum: the sum
(float64 x dim), the clicks (int64) and the sum's time (2 x float64), then with a published
vector: it (float32 x dim).
"""

from __future__ import annotations

import numpy as np

from stream_nudge.engine.state import DocumentState, DocumentTable

__all__ = ["ChangelogError", "apply_records", "decode_document", "encode_document", "records_since"]

_FORMAT = 1
_HAS_SUM = 1
_HAS_PUBLISHED = 2


class ChangelogError(ValueError):
    """A changelog record that is not one this code writes."""


def encode_document(state: DocumentState) -> bytes:
    flags = (_HAS_SUM if state.sum is not None else 0) | (
        _HAS_PUBLISHED if state.published is not None else 0
    )
    parts = [bytes((_FORMAT, flags)), np.asarray(state.original, dtype="<f4").tobytes()]
    if state.sum is not None:
        parts.append(np.asarray(state.sum, dtype="<f8").tobytes())
        parts.append(np.array([state.clicks], dtype="<i8").tobytes())
        parts.append(np.array(state.stamp, dtype="<f8").tobytes())
    if state.published is not None:
        parts.append(np.asarray(state.published, dtype="<f4").tobytes())
    return b"".join(parts)


def decode_document(value: bytes, dim: int) -> DocumentState:
    """The state a record holds; ChangelogError says what does not fit."""
    if len(value) < 2 or value[0] != _FORMAT:
        head = value[:1].hex() or "nothing"
        raise ChangelogError(f"format byte {head}, expected {_FORMAT:02x}")
    flags = value[1]
    expected = 2 + 4 * dim
    if flags & _HAS_SUM:
        expected += 8 * dim + 8 + 16
    if flags & _HAS_PUBLISHED:
        expected += 4 * dim
    if flags & ~(_HAS_SUM | _HAS_PUBLISHED) or len(value) != expected:
        raise ChangelogError(
            f"{len(value)} bytes with flags {flags}, expected {expected} for dimension {dim}"
        )
    at = 2
    original = np.frombuffer(value, dtype="<f4", count=dim, offset=at).astype(np.float32)
    at += 4 * dim
    total, clicks, stamp = None, 0, (float("nan"), float("nan"))
    if flags & _HAS_SUM:
        total = np.frombuffer(value, dtype="<f8", count=dim, offset=at).astype(np.float64)
        at += 8 * dim
        clicks = int(np.frombuffer(value, dtype="<i8", count=1, offset=at)[0])
        at += 8
        pair = np.frombuffer(value, dtype="<f8", count=2, offset=at)
        stamp = (float(pair[0]), float(pair[1]))
        at += 16
    published = None
    if flags & _HAS_PUBLISHED:
        published = np.frombuffer(value, dtype="<f4", count=dim, offset=at).astype(np.float32)
    return DocumentState(original, total, clicks, stamp, published)


def records_since(table: DocumentTable, mark: int) -> list[tuple[bytes, bytes | None]]:
    """The records for what changed since ``mark``: a tombstone for every id deleted and not back,
    then the current state of every changed live document. LookupError (from the change log) if
    the deletions since ``mark`` are no longer known: pin the mark."""
    records: list[tuple[bytes, bytes | None]] = [
        (doc_id.encode(), None)
        for doc_id in dict.fromkeys(table.changes.deleted_since(mark))
        if doc_id not in table.row_of
    ]
    for row in table.changes.since(mark).tolist():
        if table.alive[row]:
            records.append((table.ids[row].encode(), encode_document(table.document(row))))
    return records


def apply_records(table: DocumentTable, records) -> None:
    """Apply ``(key, value)`` records in order (a tombstone deletes)."""
    for key, value in records:
        doc_id = key.decode("utf-8")
        if value is None:
            table.delete(doc_id)
        else:
            table.set_document(doc_id, decode_document(value, table.dim))
