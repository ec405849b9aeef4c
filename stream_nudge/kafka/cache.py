"""The member's local cache of its changelog: what makes a normal restart fast.

The changelog topics are the state; this file, ``changelog-cache.sqlite`` in
``checkpoint.directory``, is a copy of their compacted content up to some offsets, and those
offsets (as Kafka Streams keeps a store and its ``.checkpoint`` file of changelog offsets). A
restart reads the cache, then only the changelog's tail from the cached offsets; a member whose
disk is wiped reads the whole changelog, as before.

Why that is exact: the cache holds the latest value of each key among the records below its
offsets, and the tail holds every record from those offsets on (after compaction, at least the
last record of each key), in order. Applying the tail over the cache therefore leaves every key at
its last value. Offsets that are too low only re-apply records the cache already has, in their
order: harmless. Offsets that are too high would skip records, so they are taken where no later
commit can be below them (see :class:`CacheRefresher`).

The cache is refreshed in a thread of its own, from the records of the commits (only what
changed, one SQLite transaction per refresh, every ``processing.cache_interval_ms``): the loop
only hands over references to the bytes it sent to Kafka. A cache that cannot be used (missing,
unreadable, of other changelog topics, older than the changelog keeps its tombstones, or ahead of
a changelog that was recreated) is set aside with a log line saying why; the changelog alone is
then read, which is slower and exact.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from stream_nudge.engine.changelog import STORES, Record, Stores
from stream_nudge.kafka.client import TopicPartition
from stream_nudge.memory import give_back_freed_memory

__all__ = ["CacheRefresher", "LocalCache"]

log = logging.getLogger(__name__)

_FORMAT = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    store TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, PRIMARY KEY (store, key));
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next INTEGER NOT NULL,
    PRIMARY KEY (topic, partition));
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class LocalCache:
    """The cache file of one member: its records (latest value per store and key) and the
    changelog offsets they reflect. ``topics`` are the changelog's topics by store: a cache of
    other topics is not used. ``max_age_s``: a cache written longer ago than this is not used
    (the changelog keeps tombstones for a limited time; a deletion whose tombstone is gone
    would otherwise be missed)."""

    NAME = "changelog-cache.sqlite"

    def __init__(self, directory: str | Path, topics: dict[str, str], max_age_s: float):
        self.path = Path(directory) / self.NAME
        self.topics = dict(topics)
        self.max_age_s = max_age_s

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        return db

    def load(
        self, ends: dict[TopicPartition, int]
    ) -> tuple[Stores, dict[TopicPartition, int]] | None:
        """The cached records (the latest value of each key, by store) and the offsets to read
        the tail from, or None (logged why) when there is no cache this member can use. ``ends``: the changelog partitions' end offsets
        now (a cache beyond them belongs to a changelog that was deleted and created again)."""
        if not self.path.exists():
            log.info("no local cache (%s): reading the whole changelog", self.path)
            return None
        try:
            with contextlib.closing(sqlite3.connect(self.path, timeout=30.0)) as db:
                meta = dict(db.execute("SELECT name, value FROM meta"))
                offsets = {
                    TopicPartition(t, int(p)): int(n)
                    for t, p, n in db.execute("SELECT topic, partition, next FROM offsets")
                }
                reason = self._unusable(meta, offsets, ends)
                if reason is not None:
                    log.warning(
                        "local cache %s not used: %s; reading the whole changelog",
                        self.path,
                        reason,
                    )
                    return None
                stores: Stores = {store: {} for store in STORES}
                for store, key, value in db.execute("SELECT store, key, value FROM records"):
                    stores.setdefault(store, {})[key] = value
        except sqlite3.Error as exc:
            log.warning(
                "local cache %s not used: it cannot be read (%s); reading the whole changelog",
                self.path,
                exc,
            )
            return None
        starts = {tp: offsets.get(tp, 0) for tp in ends}
        log.info(
            "local cache %s: %d records, written %.0f s ago; reading the changelog from %s",
            self.path,
            sum(len(kept) for kept in stores.values()),
            time.time() - float(meta["written_at"]),
            {f"{tp.topic}[{tp.partition}]": n for tp, n in sorted(starts.items())},
        )
        return stores, starts

    def _unusable(self, meta: dict, offsets: dict, ends: dict) -> str | None:
        if meta.get("format") != _FORMAT:
            return f"format {meta.get('format')!r}, this code writes {_FORMAT!r}"
        if meta.get("topics") != _topics_text(self.topics):
            return f"it caches the changelog {meta.get('topics')}, the config names {_topics_text(self.topics)}"
        age = time.time() - float(meta.get("written_at", 0))
        if age > self.max_age_s:
            return (
                f"written {age:.0f} s ago, longer than the changelog keeps tombstones allow "
                f"({self.max_age_s:.0f} s)"
            )
        for tp, n in offsets.items():
            if tp in ends and n > ends[tp]:
                return (
                    f"it reflects {tp.topic} partition {tp.partition} up to offset {n}, beyond "
                    f"its end {ends[tp]} (the topic was deleted and created again?)"
                )
        return None

    def write(self, records: Iterable[Record], offsets: dict[TopicPartition, int]) -> int:
        """Apply ``records`` (in order; None values delete) and set the offsets they bring the
        cache to, in one transaction. Returns the number of records applied."""
        applied = 0
        with contextlib.closing(self._connect()) as db, db:
            upserts, deletes = [], []
            for store, key, value in records:
                applied += 1
                if value is None:
                    deletes.append((store, key))
                else:
                    upserts.append((store, key, value))
            # A batch is compacted (one record per key): deletions and upserts do not overlap.
            db.executemany("DELETE FROM records WHERE store = ? AND key = ?", deletes)
            db.executemany(
                "INSERT INTO records (store, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
                upserts,
            )
            db.executemany(
                "INSERT INTO offsets (topic, partition, next) VALUES (?, ?, ?) "
                "ON CONFLICT (topic, partition) DO UPDATE SET next = excluded.next",
                [(tp.topic, tp.partition, n) for tp, n in offsets.items()],
            )
            db.executemany(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                [
                    ("format", _FORMAT),
                    ("topics", _topics_text(self.topics)),
                    ("written_at", repr(time.time())),
                ],
            )
        return applied

    def clear(self) -> None:
        """Remove the cache (its records no longer go with the changelog)."""
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.path}{suffix}").unlink()


def _topics_text(topics: dict[str, str]) -> str:
    return ",".join(f"{store}={topic}" for store, topic in sorted(topics.items()))


class CacheRefresher:
    """Keeps a :class:`LocalCache` up to date from a thread of its own.

    The loop calls :meth:`add` with each committed commit's records (references only, and only
    after the commit succeeded: the cache never holds what was aborted) and :meth:`refresh`
    with the changelog's end offsets read right after a commit, before the next commit's
    records are sent: every record of a later commit lies at or above them. The writes run in
    the thread, a refresh at a time; while one runs, the next commits' records wait (one entry
    per key, so that memory follows the keys changed, not the commits).
    """

    def __init__(
        self,
        cache: LocalCache,
        interval_s: float,
        on_written: Callable[[float, int], None] | None = None,
    ):
        self.cache, self.interval_s, self.on_written = cache, interval_s, on_written
        self._pending: dict[tuple[str, bytes], bytes | None] = {}
        self._thread: threading.Thread | None = None
        self._retry: dict[tuple[str, bytes], bytes | None] = {}  # a batch whose write failed
        self.last = time.monotonic()
        self.failed: BaseException | None = None

    def add(self, records: Iterable[Record]) -> None:
        pending = self._pending
        for store, key, value in records:
            pending[(store, key)] = value

    def due(self, now: float) -> bool:
        return now - self.last >= self.interval_s and not self.busy

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def refresh(self, offsets: dict[TopicPartition, int]) -> None:
        """Write what was added since the last refresh, with ``offsets``, in the thread (the
        call returns at once; nothing happens while the previous write runs)."""
        if self.busy:
            return
        batch = {**self._retry, **self._pending} if self._retry else self._pending
        self._pending, self._retry = {}, {}
        self.last = time.monotonic()
        self._thread = threading.Thread(
            target=self._write, args=(batch, dict(offsets)), name="stream-nudge-cache", daemon=True
        )
        self._thread.start()

    def _write(self, batch: dict, offsets: dict) -> None:
        started = time.monotonic()
        try:
            n = self.cache.write(
                (Record(store, key, value) for (store, key), value in batch.items()), offsets
            )
        except (sqlite3.Error, OSError) as exc:
            # The write is one transaction: the cache stays as it was. The batch is written
            # with the next refresh (its records under the newer ones).
            log.warning("could not refresh the local cache %s: %s", self.cache.path, exc)
            self._retry = batch  # read by refresh() only once this thread has ended
            self.failed = exc
            return
        self.failed = None
        del batch
        if n >= 10_000:
            give_back_freed_memory()  # the batch's records (all of them, after a wiped disk)
        seconds = time.monotonic() - started
        log.debug("local cache refreshed: %d records in %.2f s", n, seconds)
        if self.on_written is not None:
            self.on_written(seconds, n)

    def close(self, timeout_s: float | None = None) -> None:
        """Wait for the write under way, if any."""
        if self._thread is not None:
            self._thread.join(timeout_s)
