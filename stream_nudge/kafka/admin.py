"""Topic set-up, and the latest generation already published (to continue above it)."""

from __future__ import annotations

import logging
import time

from stream_nudge.config import Config
from stream_nudge.kafka.client import TopicPartition
from stream_nudge.kafka.common import make_admin, make_consumer

log = logging.getLogger(__name__)

# The updates topic is a table (latest embedding per document): compacted, and deletes
# (tombstones) kept a day so that every consumer sees them before compaction drops them.
UPDATES_CONFIG = {"cleanup.policy": "compact", "delete.retention.ms": "86400000"}


def ensure_topics(config: Config) -> None:
    """Create the updates topic (compacted) and the dead-letter topic if they do not exist."""
    k = config.kafka
    admin = make_admin(config)
    try:
        existing = admin.topics()
        for name, configs in ((k.topics.updates, UPDATES_CONFIG), (k.topics.dead_letters, {})):
            if name not in existing:
                admin.create(name, k.partitions, k.replication_factor, configs)
                log.info("created topic %s", name)
        for name in (k.topics.docs, k.topics.events):
            if name not in existing:
                log.warning("input topic %r does not exist (yet); waiting for it", name)
    finally:
        admin.close()


def committed_offsets(config: Config) -> dict[str, dict[str, int]]:
    """The consumer group's committed offsets of the input topics, in the checkpoint's shape
    (``{topic: {partition: offset}}``; partitions without one are left out)."""
    k = config.kafka
    admin = make_admin(config)
    try:
        existing = admin.topics()
    finally:
        admin.close()
    tps = [
        TopicPartition(topic, p)
        for topic in (k.topics.docs, k.topics.events)
        for p in range(existing.get(topic, 0))
    ]
    if not tps:
        return {}
    consumer = make_consumer(config)  # the group's own id, without joining it
    try:
        committed = consumer.committed(tps)
    finally:
        consumer.close()
    out: dict[str, dict[str, int]] = {}
    for tp, offset in committed.items():
        if offset is not None:
            out.setdefault(tp.topic, {})[str(tp.partition)] = offset
    return out


def last_generation(config: Config, timeout_s: float = 30.0) -> int:
    """The highest generation in the last record of each partition of the updates topic (0 if empty).

    Every update and tombstone carries its generation in a header, and generations grow with every
    message, so the last records hold the highest one published. A restarted service continues
    above it, so a document's generation never goes backwards even when messages published after
    the last checkpoint are published again.
    """
    topic = config.kafka.topics.updates
    admin = make_admin(config)
    try:
        partitions = admin.topics().get(topic, 0)
    finally:
        admin.close()
    if not partitions:
        return 0
    consumer = make_consumer(config, group_id=f"{config.kafka.group_id}-generation")
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = consumer.end_offsets(tps)
        wanted = {tp for tp in tps if ends[tp] > 0}
        if not wanted:
            return 0
        consumer.assign({tp: ends[tp] - 1 for tp in wanted})
        best = 0
        deadline = time.monotonic() + timeout_s
        while wanted and time.monotonic() < deadline:
            for m in consumer.poll(500, 0.5):
                tp = TopicPartition(m.topic, m.partition)
                for name, value in m.headers or ():
                    if name == "generation":
                        best = max(best, int(value))
                if m.offset >= ends[tp] - 1:
                    wanted.discard(tp)
        if wanted:
            raise TimeoutError(f"could not read the tail of {topic} within {timeout_s} s")
        return best
    finally:
        consumer.close()
