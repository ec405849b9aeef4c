"""The engine's changelog in Kafka: one compacted topic per store (see
:mod:`stream_nudge.engine.changelog`).

``<changelog>-documents`` and ``<changelog>-sums`` are keyed by document id and have as many
partitions as the docs topic, so that a document's state lies in the partition number its input
does (the same murmur2 partitioner); ``<changelog>-engine`` has one partition. All three are
compacted: the latest record of each key is kept, tombstones a day (so that a reader that was
behind still sees them).

:func:`read_changelog` reads the three topics from their beginning to their end, as a
``read_committed`` consumer outside any group, and rebuilds the engine from the records; a record
that does not decode stops it with a :class:`~stream_nudge.engine.changelog.ChangelogError`
naming the topic, partition and offset (a member refuses to run on state it cannot read rather
than start empty).
"""

from __future__ import annotations

import logging
import time

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
from stream_nudge.kafka.client import Admin, Producer, TopicPartition
from stream_nudge.kafka.common import make_admin, make_consumer

__all__ = ["changelog_topics", "ensure_changelog", "read_changelog", "write_changelog"]

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


def read_changelog(
    config: Config, progress_seconds: float = 5.0, timeout_s: float = 600.0
) -> tuple[Engine, int]:
    """The engine the changelog topics hold (a new one when they hold no committed record), and
    how many records were read. ChangelogError, naming topic, partition and offset, for a record
    that does not decode."""
    topics = changelog_topics(config)
    store_of = {topic: store for store, topic in topics.items()}
    admin = make_admin(config)
    try:
        existing = admin.topics()
    finally:
        admin.close()
    tps = [TopicPartition(t, p) for t in topics.values() for p in range(existing.get(t, 0))]
    if not tps:
        return Engine(config), 0
    consumer = make_consumer(config, group_id=f"{config.kafka.group_id}-restore")
    records: list[Record] = []
    where: dict[tuple[str, bytes], str] = {}
    try:
        ends = consumer.end_offsets(tps)
        consumer.assign({tp: 0 for tp in tps})
        left = {tp for tp in tps if ends[tp] > 0}
        total = sum(ends.values())
        started = last_report = time.monotonic()
        while left:
            for m in consumer.poll(config.kafka.max_poll_records, 0.5):
                if m.offset >= ends[TopicPartition(m.topic, m.partition)]:
                    continue  # committed after the ends were taken: not part of this state
                store = store_of[m.topic]
                records.append(Record(store, m.key or b"", m.value))
                where[(store, m.key or b"")] = (
                    f"{m.topic} partition {m.partition} offset {m.offset}"
                )
            if left:
                done = consumer.position(list(left))
                left = {tp for tp in left if done[tp] < ends[tp]}
            now = time.monotonic()
            if now - last_report >= progress_seconds:
                log.info(
                    "restoring from the changelog: %d of about %d records", len(records), total
                )
                last_report = now
            if now - started > timeout_s:
                raise TimeoutError(
                    f"could not read the changelog {sorted(topics.values())} within {timeout_s} s"
                )
    finally:
        consumer.close()
    try:
        engine = engine_from_records(config, records)
    except ChangelogError as exc:
        place = where.get((exc.store, exc.key), f"the changelog {sorted(topics.values())}")
        raise ChangelogError(f"{place}: {exc}", exc.store, exc.key) from None
    log.info(
        "restored from the changelog: %d records in %.1f s",
        len(records),
        time.monotonic() - started,
    )
    return engine, len(records)
