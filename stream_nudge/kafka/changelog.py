"""The engine's changelog in Kafka: one compacted topic per store (see
:mod:`stream_nudge.engine.changelog`).

``<changelog>-documents`` and ``<changelog>-sums`` are keyed by document id and have as many
partitions as the docs topic, so that a document's state lies in the partition number its input
does (the same murmur2 partitioner); ``<changelog>-engine`` has one partition. All three are
compacted: the latest record of each key is kept, tombstones a day (so that a reader that was
behind still sees them).

:func:`read_changelog` reads the three topics to their end, as a ``read_committed`` consumer
outside any group, from their beginning or from the offsets the member's local cache reflects
(:mod:`stream_nudge.kafka.cache`, its records first), and rebuilds the engine; a record
that does not decode stops it with a :class:`~stream_nudge.engine.changelog.ChangelogError`
naming the topic, partition and offset (a member refuses to run on state it cannot read rather
than start empty).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

from stream_nudge.config import Config
from stream_nudge.engine import Engine
from stream_nudge.engine.changelog import (
    DOCUMENTS,
    ENGINE,
    STORES,
    SUMS,
    ChangelogError,
    Record,
    engine_from_records,
)
from stream_nudge.kafka.cache import LocalCache
from stream_nudge.kafka.client import Admin, Message, Producer, TopicPartition
from stream_nudge.kafka.common import make_admin, make_consumer
from stream_nudge.memory import give_back_freed_memory

__all__ = [
    "Restored",
    "changelog_topics",
    "ensure_changelog",
    "read_changelog",
    "write_changelog",
]

log = logging.getLogger(__name__)

CHANGELOG_CONFIG = {"cleanup.policy": "compact", "delete.retention.ms": "86400000"}


def changelog_topics(config: Config) -> dict[str, str]:
    """The topic of each store."""
    k = config.kafka
    base = k.topics.changelog or f"{k.group_id}-changelog"
    return {store: f"{base}-{store}" for store in STORES}


def ensure_changelog(config: Config, admin: Admin | None = None) -> dict[str, str]:
    """Create the changelog topics that do not exist; check the partitions of those that do.
    Returns the topics by store."""
    k = config.kafka
    topics = changelog_topics(config)
    own = admin is None
    admin = admin or make_admin(config)
    try:
        existing = admin.topics()
        partitions = existing.get(k.topics.docs) or k.partitions
        # The engine store's records hold a whole validation window slot or the scalars: allow
        # what the producer may send.
        big = {**CHANGELOG_CONFIG, "max.message.bytes": str(k.max_request_size)}
        wanted = {DOCUMENTS: (partitions, CHANGELOG_CONFIG), SUMS: (partitions, CHANGELOG_CONFIG)}
        wanted[ENGINE] = (1, big)
        for store, (count, configs) in wanted.items():
            name = topics[store]
            if name not in existing:
                admin.create(name, count, k.replication_factor, configs)
                log.info("created changelog topic %s (%d partitions, compacted)", name, count)
            elif existing[name] != count:
                raise ChangelogError(
                    f"changelog topic {name} has {existing[name]} partitions, expected {count} "
                    f"(as the docs topic {k.topics.docs}): a document's state must lie in the "
                    "partition its input does"
                )
    finally:
        if own:
            admin.close()
    return topics


def write_changelog(producer: Producer, topics: dict[str, str], records: list[Record]) -> None:
    """Queue the records on the producer (inside its open transaction, if any)."""
    for record in records:
        producer.send(topics[record.store], record.key, record.value, [])


class Restored(NamedTuple):
    """What :func:`read_changelog` gives: the engine; what was read from the changelog topics
    (``tail``: by store, the last message of each key, what the local cache lacks; ``read``: how
    many records), how many records came from the local cache, and the offsets the read ended at
    (what the engine reflects)."""

    engine: Engine
    tail: dict[str, dict[bytes, Message]]
    read: int
    cached: int
    ends: dict[TopicPartition, int]

    @property
    def empty(self) -> bool:
        """The changelog holds nothing (a new engine)."""
        return not self.read and not self.cached

    def tail_records(self) -> Iterator[Record]:
        """The tail as records (None values: deleted keys), for the local cache."""
        for store, kept in self.tail.items():
            for key, message in kept.items():
                yield Record(store, key, message.value)


def read_changelog(
    config: Config,
    cache: LocalCache | None = None,
    progress: Callable[[int, int], None] | None = None,
    progress_seconds: float = 5.0,
    timeout_s: float = 600.0,
) -> Restored:
    """The engine the changelog topics hold (a new one when they hold no committed record).

    With a ``cache``: its records, then the topics from the offsets it reflects (a cache that
    cannot be used is cleared and the topics are read from their beginning). ``progress(read,
    left)`` is called as records arrive. ChangelogError, naming topic, partition and offset, for
    a record that does not decode.
    """
    topics = changelog_topics(config)
    admin = make_admin(config)
    try:
        existing = admin.topics()
    finally:
        admin.close()
    tps = [TopicPartition(t, p) for t in topics.values() for p in range(existing.get(t, 0))]
    if not tps:
        if cache is not None:
            cache.clear()
        return Restored(Engine(config), {}, 0, 0, {})
    consumer = make_consumer(config, group_id=f"{config.kafka.group_id}-restore")
    try:
        ends = consumer.end_offsets(tps)
        base = cache.load(ends) if cache is not None else None
        if base is None and cache is not None:
            cache.clear()
        stores, starts = base if base is not None else ({}, {tp: 0 for tp in tps})
        del base
        tail, read = _read(
            consumer,
            topics,
            starts,
            ends,
            config.kafka.max_poll_records,
            progress,
            progress_seconds,
            timeout_s,
        )
    finally:
        consumer.close()
    count = sum(len(kept) for kept in stores.values())
    for store, kept in tail.items():  # the tail over the cache: the last value of each key
        target = stores.setdefault(store, {})
        for key, message in kept.items():
            if message.value is None:
                target.pop(key, None)
            else:
                target[key] = message.value
    error = None
    try:
        engine = engine_from_records(config, (), base=stores)
    except ChangelogError as exc:
        error = exc
    del stores
    give_back_freed_memory()  # the cached records and the rebuild's temporaries
    if error is not None:
        if count:
            # The cache's records with the tail do not make a state: the changelog decides.
            log.warning("the local cache does not fit the changelog (%s): reading all of it", error)
            cache.clear()
            return read_changelog(config, cache, progress, progress_seconds, timeout_s)
        m = tail.get(error.store, {}).get(error.key)
        place = (
            f"{m.topic} partition {m.partition} offset {m.offset}"
            if m is not None
            else f"the changelog {sorted(topics.values())}"
        )
        raise ChangelogError(f"{place}: {error}", error.store, error.key) from None
    return Restored(engine, tail, read, count, ends)


def _read(consumer, topics, starts, ends, batch, progress, progress_seconds, timeout_s):
    """The committed records of each partition from ``starts`` to ``ends``: by store, the last
    message of each key (in the order read), and how many were read."""
    store_of = {topic: store for store, topic in topics.items()}
    tail: dict[str, dict[bytes, Message]] = {store: {} for store in topics}
    end_of: dict[str, dict[int, int]] = {}
    for tp, end in ends.items():
        end_of.setdefault(tp.topic, {})[tp.partition] = end
    consumer.assign(starts)
    left = {tp for tp in ends if ends[tp] > starts.get(tp, 0)}
    total = sum(max(0, ends[tp] - starts.get(tp, 0)) for tp in ends)
    read = 0
    started = last_report = time.monotonic()
    if progress is not None:
        progress(0, total)
    while left:
        for m in consumer.poll(batch, 0.5):
            if m.offset >= end_of[m.topic][m.partition]:
                continue  # committed after the ends were taken: not part of this state
            kept = tail[store_of[m.topic]]
            key = m.key or b""
            kept.pop(key, None)  # the last one at the end, in the order read
            kept[key] = m
            read += 1
        done = consumer.position(list(left))
        left = {tp for tp in left if done[tp] < ends[tp]}
        now = time.monotonic()
        if progress is not None:
            progress(read, sum(ends[tp] - done[tp] for tp in left))
        if now - last_report >= progress_seconds:
            log.info("restoring from the changelog: %d of about %d records", read, total)
            last_report = now
        if now - started > timeout_s:
            raise TimeoutError(
                f"could not read the changelog {sorted(topics.values())} within {timeout_s} s"
            )
    if progress is not None:
        progress(read, 0)
    log.info("read %d records of the changelog in %.1f s", read, time.monotonic() - started)
    return tail, read
