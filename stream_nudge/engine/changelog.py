"""The engine's state as a changelog: keyed records, the latest one per key wins.

A checkpoint writes the whole state; a changelog writes what changed since the last commit, as
records that a compacted topic keeps by key. Replayed in order (or compacted: the last record of
each key), the records rebuild the state a checkpoint of the same moment holds. Three stores, each
a topic of its own in the runtime (as Kafka Streams keeps one changelog topic per store):

- ``documents``: key the document id; value its row and unit original. Written when the original
  is set (new or replaced), so a click costs no original; a tombstone when the document goes.
- ``sums``: key the document id; value its query sum, click count, the sum's time (decay) and the
  vector last published for it. Written when clicks reach the sum or something is published.
- ``engine``: everything else, which has no document id: ``w:<slot>`` one record per validation
  window slot (its query, answers and score cache), ``j:<generation>:<n>`` the query memory as
  journal records (the entries added or changed, one record per commit; a generation's records
  deleted when the memory drops it), ``p:<arrival number>`` one per click waiting for its document, ``c:<row>`` one per
  document changed since the selector last brought the window's caches up to date, and
  ``scalars`` the small rest (gamma, the generation counter, counts, stream time, ...).

Keys by document id put a document's records in the partition its input records go to (the same
partitioner), which is what a member that owns some partitions restores from.

What changed is known without a pass over the corpus: the document table's change logs (a mark
per log, the deletions kept by pinning); the window's slots are compared with a copy of what was
written (a few MB at most); the query memory by the identity of each entry (an entry is replaced,
never modified, when it changes); the waiting clicks by arrival number.

Values are little-endian binary for the vectors, JSON for the rest; each starts with a format
byte. :class:`ChangelogError` names what does not decode; the runtime adds topic, partition and
offset.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import orjson

from stream_nudge.engine.engine import Engine
from stream_nudge.engine.state import DocumentTable

__all__ = [
    "DOCUMENTS",
    "ENGINE",
    "STORES",
    "SUMS",
    "ChangelogError",
    "ChangelogWriter",
    "Record",
    "Stores",
    "compact",
    "engine_from_records",
]

DOCUMENTS, SUMS, ENGINE = "documents", "sums", "engine"
STORES = (DOCUMENTS, SUMS, ENGINE)

_FORMAT = 1
_HAS_PUBLISHED = 1
_SCALARS = b"scalars"


class ChangelogError(ValueError):
    """A changelog record that is not one this code writes, or records that do not fit;
    ``store`` and ``key`` name the record when one is to blame."""

    def __init__(self, message: str, store: str | None = None, key: bytes | None = None):
        super().__init__(message)
        self.store, self.key = store, key


def _blame(store: str, key: bytes, decode, *args):
    """``decode(*args)``, its ChangelogError naming the record."""
    try:
        return decode(*args)
    except ChangelogError as exc:
        if exc.key is not None:
            raise
        name = key.decode(errors="replace")
        raise ChangelogError(f"{store} record {name!r}: {exc}", store, key) from None


class Record(NamedTuple):
    """One changelog record: its store, key, and value (None: a tombstone)."""

    store: str
    key: bytes
    value: bytes | None


# --- values -------------------------------------------------------------------------------------


def _check(value: bytes, size: int | None, what: str) -> None:
    if len(value) < 1 or value[0] != _FORMAT:
        head = value[:1].hex() or "nothing"
        raise ChangelogError(f"{what}: format byte {head}, expected {_FORMAT:02x}")
    if size is not None and len(value) != size:
        raise ChangelogError(f"{what}: {len(value)} bytes, expected {size}")


def encode_original(row: int, original: np.ndarray) -> bytes:
    """A ``documents`` value: format, row (int64), the unit original (float32 x dim)."""
    head = bytes((_FORMAT,)) + np.array([row], dtype="<i8").tobytes()
    return head + np.asarray(original, dtype="<f4").tobytes()


def decode_original(value: bytes, dim: int) -> tuple[int, np.ndarray]:
    _check(value, 9 + 4 * dim, f"a documents record for dimension {dim}")
    row = int(np.frombuffer(value, dtype="<i8", count=1, offset=1)[0])
    return row, np.frombuffer(value, dtype="<f4", count=dim, offset=9).astype(np.float32)


def encode_sum(state) -> bytes:
    """A ``sums`` value from a :class:`~stream_nudge.engine.state.DocumentState` with a sum:
    format, flags (1: a published vector ends it), the sum (float64 x dim), the clicks (int64),
    the sum's time (2 x float64), then the published vector (float32 x dim)."""
    flags = _HAS_PUBLISHED if state.published is not None else 0
    parts = [
        bytes((_FORMAT, flags)),
        np.asarray(state.sum, dtype="<f8").tobytes(),
        np.array([state.clicks], dtype="<i8").tobytes(),
        np.array(state.stamp, dtype="<f8").tobytes(),
    ]
    if state.published is not None:
        parts.append(np.asarray(state.published, dtype="<f4").tobytes())
    return b"".join(parts)


def _sums_layout(dim: int, published: bool) -> np.dtype:
    fields = [("format", "u1"), ("flags", "u1"), ("sum", "<f8", (dim,)), ("clicks", "<i8")]
    fields.append(("stamp", "<f8", (2,)))
    if published:
        fields.append(("published", "<f4", (dim,)))
    return np.dtype(fields)


def encode_sums(docs: DocumentTable, rows: np.ndarray) -> list[bytes]:
    """:func:`encode_sum` of the documents in ``rows`` (each with a sum), all at once: the
    values a commit writes for the documents whose sums changed."""
    slots = docs.slots
    at = docs.slot_of[rows]
    has = slots.has_published[at]
    out: list[bytes] = [b""] * len(rows)
    for published in (False, True):
        chosen = np.flatnonzero(has == published)
        if len(chosen) == 0:
            continue
        layout = _sums_layout(docs.dim, published)
        block = np.zeros(len(chosen), dtype=layout)
        which = at[chosen]
        block["format"] = _FORMAT
        block["flags"] = _HAS_PUBLISHED if published else 0
        block["sum"] = slots.sums[which]
        block["clicks"] = slots.clicks[which]
        block["stamp"] = slots.stamps[which]
        if published:
            block["published"] = slots.published[which]
        data, size = block.tobytes(), layout.itemsize
        for i, place in enumerate(chosen.tolist()):
            out[place] = data[i * size : (i + 1) * size]
    return out


def decode_sum(value: bytes, dim: int):
    """``(sum, clicks, stamp, published or None)`` of a ``sums`` value."""
    _check(value, None, "a sums record")
    flags = value[1] if len(value) > 1 else 0
    size = 2 + 8 * dim + 8 + 16 + (4 * dim if flags & _HAS_PUBLISHED else 0)
    if flags & ~_HAS_PUBLISHED or len(value) != size:
        raise ChangelogError(
            f"a sums record: {len(value)} bytes with flags {flags}, expected {size} for "
            f"dimension {dim}"
        )
    total = np.frombuffer(value, dtype="<f8", count=dim, offset=2).astype(np.float64)
    at = 2 + 8 * dim
    clicks = int(np.frombuffer(value, dtype="<i8", count=1, offset=at)[0])
    stamp = np.frombuffer(value, dtype="<f8", count=2, offset=at + 8).astype(np.float64)
    published = None
    if flags & _HAS_PUBLISHED:
        published = np.frombuffer(value, dtype="<f4", count=dim, offset=at + 24).astype(np.float32)
    return total, clicks, stamp, published


def _pack(head, *arrays: np.ndarray) -> bytes:
    """Format, JSON head length (uint32), JSON head, then the arrays' bytes."""
    text = orjson.dumps(head)
    return b"".join(
        [bytes((_FORMAT,)), np.array([len(text)], dtype="<u4").tobytes(), text]
        + [np.ascontiguousarray(a).tobytes() for a in arrays]
    )


def _unpack(value: bytes, what: str):
    """``(head, the bytes after it)`` of a :func:`_pack` value."""
    _check(value, None, what)
    if len(value) < 5:
        raise ChangelogError(f"{what}: {len(value)} bytes, too short")
    size = int(np.frombuffer(value, dtype="<u4", count=1, offset=1)[0])
    try:
        head = orjson.loads(value[5 : 5 + size])
    except orjson.JSONDecodeError as exc:
        raise ChangelogError(f"{what}: its JSON head does not parse ({exc})") from None
    return head, memoryview(value)[5 + size :]


# --- the writer ---------------------------------------------------------------------------------


class ChangelogWriter:
    """The records of what changed in ``engine`` since the last :meth:`records` (the first call:
    since the engine was in the state the changelog already holds, which for a new writer is
    the engine's state now; pass ``fresh=True`` for an engine the changelog holds nothing of)."""

    def __init__(self, engine: Engine, fresh: bool = False):
        self.engine = engine
        self._docs: DocumentTable | None = None
        self._marks = (0, 0, 0)  # in the table's three change logs: what was written
        self._window = None  # a copy of the window as written: arrays, query ids, answers
        # Per generation, what was written of each query id (the entry itself: an entry is
        # replaced, never changed, so identity tells whether it changed since).
        self._queries: dict[int, dict[str, tuple]] = {}
        self._generation = 0
        self._pending: set[int] = set()  # arrival numbers written
        self._scalars = b""
        self._selector_mark = -1
        self._backlog: set[int] = set()  # rows with a c: record
        if not fresh:
            # The engine's state is what the changelog holds: start from it. (The documents'
            # records are not even made: only the table's marks are taken.)
            self._baseline = True
            self.records()
        self._baseline = False

    def records(self) -> list[Record]:
        """The records of the changes since the last call (between batches)."""
        e = self.engine
        out: list[Record] = []
        if e.docs is not None:
            self._selector_backlog(e.docs, out)
            self._documents(e.docs, out)
            self._window_slots(e.window, out)
        self._query_memory(out)
        self._waiting_clicks(out)
        scalars = json.dumps(self._scalar_state(), sort_keys=True).encode()
        if scalars != self._scalars:
            out.append(Record(ENGINE, _SCALARS, bytes((_FORMAT,)) + scalars))
            self._scalars = scalars
        return out

    def _scalar_state(self) -> dict:
        e = self.engine
        # Without the selector's backlog, which grows with the changes between two selections
        # (the scalars are written at every commit): it has records of its own.
        meta = e.scalars(backlog=False)
        meta["query_generation"] = e.ingest.queries.generation
        meta["pending_seq"] = e.ingest.pending.last_seq
        if e.docs is not None:
            meta["docs"] = {
                "dim": e.docs.dim,
                "rows": e.docs.n_rows,
                "free_rows": list(e.docs.free_rows),
                "window": e.window.capacity,
                "window_width": e.window.width,
                "window_order": list(e.window.order),
            }
        return meta

    def _selector_backlog(self, docs: DocumentTable, out: list[Record]) -> None:
        """The documents changed since the selector last brought the window's caches up to date,
        a ``c:<row>`` record each: each commit adds those changed since the previous commit; a
        selection (the selector's mark moved) takes back those it has seen."""
        mark = self.engine.selector.mark
        if docs is not self._docs or mark != self._selector_mark:
            rows = set(docs.changes.since(mark).tolist())
            for row in sorted(self._backlog - rows):
                out.append(Record(ENGINE, f"c:{row}".encode(), None))
            self._backlog &= rows
        else:
            rows = set(docs.changes.since(self._marks[0]).tolist())
        self._selector_mark = mark
        for row in sorted(rows - self._backlog):
            out.append(Record(ENGINE, f"c:{row}".encode(), bytes((_FORMAT,))))
        self._backlog |= rows

    def _documents(self, docs: DocumentTable, out: list[Record]) -> None:
        changes, originals, published = docs.changes, docs.originals_log, docs.published_log
        if docs is not self._docs:
            # A table this writer has not seen: nothing of it was written, so all of it,
            # whatever its change logs say (a restored table's say nothing); unless the
            # changelog holds it already (a writer's first call on a restored engine).
            self._docs = docs
            deleted: list[str] = []
            new = np.flatnonzero(docs.alive[: docs.n_rows])
            rows = new
            if self._baseline:
                new = rows = new[:0]
        else:
            changed_mark, originals_mark, published_mark = self._marks
            deleted = changes.deleted_since(changed_mark)
            new = originals.since(originals_mark)
            rows = np.union1d(changes.since(changed_mark), published.since(published_mark))
        for doc_id in dict.fromkeys(deleted):
            key = doc_id.encode()
            out.append(Record(DOCUMENTS, key, None))
            out.append(Record(SUMS, key, None))
        for row in new.tolist():
            if docs.alive[row]:
                out.append(
                    Record(
                        DOCUMENTS, docs.ids[row].encode(), encode_original(row, docs.originals[row])
                    )
                )
        rows = rows[docs.alive[rows] & (docs.slot_of[rows] >= 0)]
        for row, value in zip(rows.tolist(), encode_sums(docs, rows), strict=True):
            out.append(Record(SUMS, docs.ids[row].encode(), value))
        self._marks = (changes.mark, originals.mark, published.mark)
        changes.pin(changes.mark)

    def _window_slots(self, window, out: list[Record]) -> None:
        arrays, meta = window.to_state()
        # Bit patterns, so that NaN equals NaN and -0.0 differs from 0.0.
        now = {name: a.view(f"<u{a.itemsize}") for name, a in arrays.items()}
        shadow = self._window
        if shadow is None:
            capacity = len(meta["query_ids"])
            shadow = self._window = (
                {name: np.zeros_like(a) for name, a in now.items()},
                [None] * capacity,
                [{} for _ in range(capacity)],
            )
        kept, ids, answers = shadow
        differs = np.zeros(len(ids), dtype=bool)
        for name, a in now.items():
            differs |= (a != kept[name]).reshape(len(ids), -1).any(axis=1)
        for slot, (query_id, named) in enumerate(
            zip(meta["query_ids"], meta["answers"], strict=True)
        ):
            if differs[slot] or query_id != ids[slot] or named != answers[slot]:
                key = f"w:{slot}".encode()
                if query_id is None:
                    value = None
                else:
                    value = _pack(
                        [query_id, named],
                        *(arrays[name][slot] for name in _WINDOW_ARRAYS),
                    )
                out.append(Record(ENGINE, key, value))
                for name in now:
                    kept[name][slot] = now[name][slot]
                ids[slot], answers[slot] = query_id, dict(named)

    def _query_memory(self, out: list[Record]) -> None:
        """The query memory's changes as journal records: ``j:<generation>:<n>``, each a JSON
        object of the entries (query id: [split, documents]) added or changed in that generation
        since the last commit (a later record wins). One record per commit (a few for a big one)
        instead of one per query; a generation's records are deleted (tombstones) once the
        memory drops it."""
        memory = self.engine.ingest.queries
        g, journal = memory.generation, memory.journal
        rolled = g != self._generation
        parts = [(memory.current, g)]
        if rolled:
            parts.insert(0, (memory.previous, g - 1))
        for entries, tag in parts:
            written = self._queries.setdefault(tag, {})
            changed: dict[str, tuple] = {}
            # An entry that changes is put at the end of its generation (see ingest): the
            # changes since the last call are the tail, read backwards up to the first entry
            # written as it is.
            for query_id, entry in reversed(entries.items()):
                if written.get(query_id) is entry:
                    break
                changed[query_id] = entry
            written.update(changed)
            items = list(changed.items())
            for start in range(0, len(items), _JOURNAL_ENTRIES):
                n = journal.get(tag, 0)
                journal[tag] = n + 1
                body = orjson.dumps(dict(items[start : start + _JOURNAL_ENTRIES]))
                out.append(Record(ENGINE, f"j:{tag}:{n}".encode(), bytes((_FORMAT,)) + body))
        if rolled:  # a generation (or more) was dropped since the last call
            for tag in sorted(t for t in journal if t < g - 1):
                out.extend(
                    Record(ENGINE, f"j:{tag}:{n}".encode(), None) for n in range(journal.pop(tag))
                )
            for tag in [t for t in self._queries if t < g - 1]:
                del self._queries[tag]
        self._generation = g

    def _waiting_clicks(self, out: list[Record]) -> None:
        waiting = self.engine.ingest.pending.waiting()
        for seq in sorted(self._pending - waiting.keys()):
            out.append(Record(ENGINE, f"p:{seq}".encode(), None))
        for seq in sorted(waiting.keys() - self._pending):
            doc_id, w = waiting[seq]
            head = [doc_id, w.query_id]
            numbers = np.array([w.weight, *w.when, *w.born], dtype="<f8")
            out.append(
                Record(ENGINE, f"p:{seq}".encode(), _pack(head, numbers, w.vector.astype("<f4")))
            )
        self._pending = set(waiting)


# At most this many query memory entries in one journal record (about 100 bytes each).
_JOURNAL_ENTRIES = 4096

# The window's per-slot arrays, in the order a window record holds them.
_WINDOW_ARRAYS = (
    "window_raw",
    "window_cache_rows",
    "window_cache_scores",
    "window_floor",
    "window_born",
)


# --- restoring ----------------------------------------------------------------------------------


Stores = dict[str, dict[bytes, bytes]]


def compact(records: Iterable[Record], base: Stores | None = None) -> Stores:
    """The latest value of each key, by store (tombstones remove the key): of ``records`` applied
    in order over ``base`` (which is updated in place), or over nothing."""
    out: Stores = base if base is not None else {}
    for store in STORES:
        out.setdefault(store, {})
    for store, key, value in records:
        if store not in out:
            raise ChangelogError(f"unknown store {store!r}")
        if value is None:
            out[store].pop(key, None)
        else:
            out[store][key] = value
    return out


def engine_from_records(params, records: Iterable[Record], base: Stores | None = None) -> Engine:
    """The engine the changelog ``records`` (in order, compacted or not) describe, applied over
    ``base`` (the latest value of each key before them, by store: a local cache's; updated in
    place); a new engine when they hold nothing."""
    stores = compact(records, base)
    engine_store = stores[ENGINE]
    if _SCALARS not in engine_store:
        if any(stores.values()):
            raise ChangelogError("records without the engine's scalars record")
        return Engine(params)
    value = engine_store[_SCALARS]
    _blame(ENGINE, _SCALARS, _check, value, None, "the scalars record")
    meta = json.loads(value[1:])
    arrays: dict[str, np.ndarray] = {}
    journal = _restore_queries(engine_store, meta)
    _restore_selector_backlog(engine_store, meta)
    _restore_pending(engine_store, meta, arrays)
    shape = meta.pop("docs", None)
    if shape is not None:
        _restore_documents(stores, shape, arrays, meta)
        _restore_window(engine_store, shape, arrays, meta)
    engine = Engine.from_state(params, arrays, meta)
    engine.ingest.queries.journal = journal
    return engine


def _restore_queries(store: dict[bytes, bytes], meta: dict) -> dict[int, int]:
    """The query memory's journal records into ``meta``; returns how many records each
    generation has (where a writer goes on numbering)."""
    g = int(meta["query_generation"])
    records = []
    for key, value in store.items():
        if key.startswith(b"q:"):
            raise ChangelogError(
                "a query memory record of an earlier changelog format (one per query); "
                "this version writes journal records (j:<generation>:<n>): start on new "
                "changelog topics (kafka.topics.changelog) with the group's offsets reset to "
                "the earliest",
                ENGINE,
                key,
            )
        if not key.startswith(b"j:"):
            continue
        what = f"query memory record {key.decode(errors='replace')!r}"
        _blame(ENGINE, key, _check, value, None, what)
        try:
            _, tag, n = key.decode().split(":")
            entries = orjson.loads(value[1:])
            records.append(
                (int(tag), int(n), [(q, split, tuple(d)) for q, (split, d) in entries.items()])
            )
        except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError) as exc:
            raise ChangelogError(f"{what} does not decode: {exc}", ENGINE, key) from None
    records.sort(key=lambda r: (r[0], r[1]))
    # The writer's numbering, from the records themselves: after each generation's last one.
    journal: dict[int, int] = {}
    for tag, n, _ in records:
        journal[tag] = max(journal.get(tag, 0), n + 1)
    previous: dict = {}
    current: dict = {}
    for tag, _, entries in records:
        target = current if tag == g else previous if tag == g - 1 else None
        if target is None:
            continue  # a dropped generation's record whose tombstone is not read yet
        for query_id, split, named in entries:
            target.pop(query_id, None)  # the latest at the end, as the memory keeps them
            target[query_id] = (split, named)
    meta["queries"] = [
        [[q, split, list(named)] for q, (split, named) in generation.items()]
        for generation in (previous, current)
    ]
    return journal


def _restore_selector_backlog(store: dict[bytes, bytes], meta: dict) -> None:
    rows = []
    for key, value in store.items():
        if key.startswith(b"c:"):
            _blame(ENGINE, key, _check, value, 1, "a selector backlog record")
            rows.append(int(key[2:]))
    meta["changed_since_caches"] = sorted(rows)


def _restore_pending(store: dict[bytes, bytes], meta: dict, arrays: dict) -> None:
    items = []
    for key, value in store.items():
        if not key.startswith(b"p:"):
            continue
        what = f"waiting click record {key!r}"
        head, data = _blame(ENGINE, key, _unpack, value, what)
        numbers = np.frombuffer(data[:40], dtype="<f8") if len(data) >= 40 else None
        if numbers is None or (len(data) - 40) % 4:
            raise ChangelogError(f"{what}: {len(data)} bytes of arrays", ENGINE, key)
        items.append((int(key[2:]), head, numbers, np.frombuffer(data[40:], dtype="<f4")))
    items.sort(key=lambda item: item[0])
    meta["pending_ids"] = [head[0] for _, head, _, _ in items]
    meta["pending_queries"] = [head[1] for _, head, _, _ in items]
    arrays["pending_seqs"] = np.array([seq for seq, _, _, _ in items], dtype=np.int64)
    arrays["pending_weights"] = np.array([n[0] for _, _, n, _ in items], dtype=np.float64)
    arrays["pending_times"] = np.array([n[1:3] for _, _, n, _ in items]).reshape(-1, 2)
    arrays["pending_born"] = np.array([n[3:5] for _, _, n, _ in items]).reshape(-1, 2)
    if items:
        arrays["pending_vectors"] = np.stack([v for _, _, _, v in items]).astype(np.float32)


def _restore_documents(stores, shape: dict, arrays: dict, meta: dict) -> None:
    dim, n = int(shape["dim"]), int(shape["rows"])
    originals = np.zeros((n, dim), dtype=np.float32)
    alive = np.zeros(n, dtype=bool)
    ids: list[str | None] = [None] * n
    # Decoded a block at a time, as one array of (format, row, original) structs: a restore's
    # biggest store (one record per live document).
    layout = np.dtype([("format", "u1"), ("row", "<i8"), ("original", "<f4", (dim,))])
    size = layout.itemsize
    items = list(stores[DOCUMENTS].items())
    for start in range(0, len(items), 65_536):
        block = items[start : start + 65_536]
        values = [value for _, value in block]
        odd = [i for i, value in enumerate(values) if len(value) != size or value[0] != _FORMAT]
        if odd:  # the first one that does not decode, with decode_original's message
            key, value = block[odd[0]]
            _blame(DOCUMENTS, key, decode_original, value, dim)
        decoded = np.frombuffer(b"".join(values), dtype=layout)
        rows = decoded["row"]
        bad = (rows < 0) | (rows >= n)
        bad[~bad] = alive[rows[~bad]]  # rows an earlier block placed a document on
        order = np.argsort(rows, kind="stable")
        bad[order[1:][rows[order][1:] == rows[order][:-1]]] = True  # twice in this block
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            key, row = block[i][0], int(rows[i])
            taken = None
            if 0 <= row < n:
                first = int(np.flatnonzero(rows == row)[0])
                taken = ids[row] if alive[row] else block[first][0].decode()
            raise ChangelogError(
                f"document {key.decode(errors='replace')!r} at row {row}: outside the table's "
                f"{n} rows or on a row taken by {taken!r}",
                DOCUMENTS,
                key,
            )
        originals[rows] = decoded["original"]
        alive[rows] = True
        for (key, _), row in zip(block, rows.tolist(), strict=True):
            ids[row] = key.decode()
    row_of = {doc_id: row for row, doc_id in enumerate(ids) if doc_id is not None}
    slot_rows, sums, clicks, stamps, published, has_published = [], [], [], [], [], []
    for key, value in stores[SUMS].items():
        row = row_of.get(key.decode())
        if row is None:
            raise ChangelogError(
                f"a sums record for {key.decode(errors='replace')!r}, which no documents record "
                "holds",
                SUMS,
                key,
            )
        total, count, stamp, vector = _blame(SUMS, key, decode_sum, value, dim)
        slot_rows.append(row)
        sums.append(total)
        clicks.append(count)
        stamps.append(stamp)
        has_published.append(vector is not None)
        published.append(vector if vector is not None else np.zeros(dim, dtype=np.float32))
    order = np.argsort(np.array(slot_rows, dtype=np.int64), kind="stable")
    slot_of = np.full(n, -1, dtype=np.int64)
    row_of_slot = np.array(slot_rows, dtype=np.int64)[order]
    slot_of[row_of_slot] = np.arange(len(order))
    arrays.update(
        {
            "originals": originals,
            "alive": alive,
            "slot_of": slot_of,
            "free_rows": np.array(shape["free_rows"], dtype=np.int64),
            "sums": np.array(sums, dtype=np.float64).reshape(-1, dim)[order],
            "clicks": np.array(clicks, dtype=np.int64)[order],
            "stamps": np.array(stamps, dtype=np.float64).reshape(-1, 2)[order],
            "published": np.array(published, dtype=np.float32).reshape(-1, dim)[order],
            "has_published": np.array(has_published, dtype=bool)[order],
            "row_of_slot": row_of_slot,
            "free_slots": np.zeros(0, dtype=np.int64),
        }
    )
    meta["ids"] = ids


def _restore_window(store: dict[bytes, bytes], shape: dict, arrays: dict, meta: dict) -> None:
    dim, capacity, width = int(shape["dim"]), int(shape["window"]), int(shape["window_width"])
    out = {
        "window_raw": np.zeros((capacity, dim), dtype=np.float32),
        "window_cache_rows": np.full((capacity, width), -1, dtype=np.int64),
        "window_cache_scores": np.full((capacity, width), -np.inf, dtype=np.float32),
        "window_floor": np.full(capacity, np.inf),
        "window_born": np.full((capacity, 2), np.nan),
    }
    query_ids: list[str | None] = [None] * capacity
    answers: list[dict] = [{} for _ in range(capacity)]
    for key, value in store.items():
        if not key.startswith(b"w:"):
            continue
        what = f"window record {key.decode(errors='replace')}"
        slot = int(key[2:])
        if not 0 <= slot < capacity:
            raise ChangelogError(f"{what}: the window holds {capacity} queries", ENGINE, key)
        (query_id, named), data = _blame(ENGINE, key, _unpack, value, what)
        at = 0
        for name in _WINDOW_ARRAYS:
            row = out[name][slot]
            if len(data) < at + row.nbytes:
                raise ChangelogError(f"{what}: {len(data)} bytes of arrays, too few", ENGINE, key)
            part = np.frombuffer(data[at : at + row.nbytes], dtype=row.dtype)
            out[name][slot] = part.reshape(np.shape(row))
            at += row.nbytes
        if at != len(data):
            raise ChangelogError(f"{what}: {len(data)} bytes of arrays, expected {at}", ENGINE, key)
        query_ids[slot], answers[slot] = query_id, named
    arrays.update(out)
    meta["window"] = {"query_ids": query_ids, "answers": answers, "order": shape["window_order"]}
