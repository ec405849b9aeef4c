"""Topic set-up, and the latest generation already published (to continue above it)."""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from stream_nudge.config import Config
from stream_nudge.kafka.common import client_settings

log = logging.getLogger(__name__)

# The updates topic is a table (latest embedding per document): compacted, and deletes
# (tombstones) kept a day so that every consumer sees them before compaction drops them.
UPDATES_CONFIG = {"cleanup.policy": "compact", "delete.retention.ms": "86400000"}


def ensure_topics(config: Config) -> None:
    """Create the updates topic (compacted) and the dead-letter topic if they do not exist."""
    k = config.kafka
    admin = KafkaAdminClient(**client_settings(config), request_timeout_ms=30_000)
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(
                k.topics.updates, k.partitions, k.replication_factor, topic_configs=UPDATES_CONFIG
            ),
            NewTopic(k.topics.dead_letters, k.partitions, k.replication_factor),
        ]
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            try:
                admin.create_topics(missing)
                log.info("created topics %s", ", ".join(t.name for t in missing))
            except TopicAlreadyExistsError:
                pass  # created meanwhile by another client
        for name in (k.topics.docs, k.topics.events):
            if name not in existing:
                log.warning("input topic %r does not exist (yet); waiting for it", name)
    finally:
        admin.close()


def last_generation(config: Config, timeout_s: float = 30.0) -> int:
    """The highest generation in the last record of each partition of the updates topic (0 if empty).

    Every update and tombstone carries its generation in a header, and generations grow with every
    message, so the last records hold the highest one published. A restarted service continues
    above it, so a document's generation never goes backwards even when messages published after
    the last checkpoint are published again.
    """
    topic = config.kafka.topics.updates
    consumer = KafkaConsumer(**client_settings(config), enable_auto_commit=False, group_id=None)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        if not tps:
            return 0
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        wanted = {tp for tp in tps if ends[tp] > 0}
        for tp in wanted:
            consumer.seek(tp, ends[tp] - 1)
        best = 0
        import time

        deadline = time.monotonic() + timeout_s
        while wanted and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    for name, value in record.headers or []:
                        if name == "generation":
                            best = max(best, int(value))
                    if record.offset >= ends[tp] - 1:
                        wanted.discard(tp)
        if wanted:
            raise TimeoutError(f"could not read the tail of {topic} within {timeout_s} s")
        return best
    finally:
        consumer.close()
