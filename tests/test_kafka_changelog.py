"""The engine's changelog through the real broker, with both clients: written in transactions
(aborted ones among them), read back as a read_committed consumer, it rebuilds the engine; topics
are created compacted and co-partitioned with the docs topic; a record that does not decode is
refused with its topic, partition and offset."""

from __future__ import annotations

import sqlite3
import uuid

import pytest
from test_changelog import canonical
from test_checkpoint import OVERRIDES, stream

from stream_nudge.config import load_config
from stream_nudge.engine import Engine
from stream_nudge.engine.changelog import DOCUMENTS, ENGINE, ChangelogError, ChangelogWriter
from stream_nudge.kafka.cache import CacheRefresher, LocalCache
from stream_nudge.kafka.changelog import (
    changelog_topics,
    ensure_changelog,
    read_changelog,
    write_changelog,
)
from stream_nudge.kafka.common import make_admin, make_consumer, make_producer

pytestmark = pytest.mark.kafka

CLIENTS = ["confluent-kafka", "kafka-python"]


def _config(bootstrap: str, client: str, docs: str, **extra):
    name = f"cl-{uuid.uuid4().hex[:10]}"
    kafka = {
        "bootstrap_servers": bootstrap,
        "client": client,
        "group_id": name,
        "topics": {"docs": docs, "changelog": name},
        **extra,
    }
    return load_config(overrides={**OVERRIDES, "kafka": kafka})


@pytest.mark.parametrize("client", CLIENTS)
def test_the_changelog_written_in_transactions_rebuilds_the_engine(
    kafka_bootstrap, make_topic, client
):
    docs = make_topic("docs", partitions=3)
    config = _config(kafka_bootstrap, client, docs)
    topics = ensure_changelog(config)
    admin = make_admin(config)
    try:
        existing = admin.topics()
    finally:
        admin.close()
    assert [existing[topics[s]] for s in ("documents", "sums", "engine")] == [3, 3, 1]

    engine = Engine(config)
    writer = ChangelogWriter(engine, fresh=True)
    producer = make_producer(config, transactional_id=f"{config.kafka.group_id}-0")
    recs = stream()
    try:
        for i in range(0, len(recs), 5):
            engine.process(recs[i : i + 5])
            producer.begin()
            write_changelog(producer, topics, writer.records())
            producer.commit({}, None)
            if i % 20 == 0:
                # A transaction that fails after writing: none of it may be read back.
                producer.begin()
                producer.send(topics[DOCUMENTS], b"d1", b"garbage", [])
                producer.send(topics[ENGINE], b"scalars", b"garbage", [])
                producer.flush()
                producer.abort()
    finally:
        producer.close()
    restored = read_changelog(config)
    assert canonical(restored.engine) == canonical(engine)
    assert restored.read > 0 and restored.cached == 0


@pytest.mark.parametrize("client", CLIENTS)
def test_an_empty_or_missing_changelog_is_a_new_engine(kafka_bootstrap, make_topic, client):
    config = _config(kafka_bootstrap, client, make_topic("docs"))
    restored = read_changelog(config)  # no topics at all
    assert restored.engine.docs is None and restored.empty
    ensure_changelog(config)
    restored = read_changelog(config)  # topics, no records
    assert restored.engine.docs is None and restored.empty


def test_a_record_that_does_not_decode_is_named_by_topic_partition_and_offset(
    kafka_bootstrap, make_topic
):
    config = _config(kafka_bootstrap, "confluent-kafka", make_topic("docs"))
    topics = ensure_changelog(config)
    engine = Engine(config)
    writer = ChangelogWriter(engine, fresh=True)
    engine.process(stream()[:10])
    producer = make_producer(config)
    try:
        write_changelog(producer, topics, writer.records())
        producer.send(topics[DOCUMENTS], b"d3", b"\x09broken", [])
        producer.flush()
    finally:
        producer.close()
    with pytest.raises(
        ChangelogError, match=rf"{topics[DOCUMENTS]} partition 0 offset \d+: .*format byte 09"
    ):
        read_changelog(config)


def test_changelog_topics_with_other_partitions_than_the_docs_topic_are_refused(
    kafka_bootstrap, make_topic
):
    config = _config(kafka_bootstrap, "confluent-kafka", make_topic("docs", partitions=2))
    admin = make_admin(config)
    try:
        admin.create(changelog_topics(config)[DOCUMENTS], 5, 1, {"cleanup.policy": "compact"})
    finally:
        admin.close()
    with pytest.raises(ChangelogError, match="has 5 partitions, expected 2"):
        ensure_changelog(config)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_restart_reads_the_local_cache_then_only_the_changelog_tail(
    kafka_bootstrap, make_topic, tmp_path, client
):
    """Commits in transactions; the local cache refreshed after some of them with the end
    offsets read right after the commit (as the committer does); more commits. The cache and
    the tail rebuild the engine the whole changelog does, reading only the tail."""
    config = _config(kafka_bootstrap, client, make_topic("docs", partitions=2))
    topics = ensure_changelog(config)
    engine = Engine(config)
    writer = ChangelogWriter(engine, fresh=True)
    producer = make_producer(config, transactional_id=f"{config.kafka.group_id}-0")
    consumer = make_consumer(config, group_id=f"{config.kafka.group_id}-ends")
    cache = LocalCache(tmp_path, topics, max_age_s=3600)
    refresher = CacheRefresher(cache, interval_s=0.0)
    whole = read_changelog(config)  # the topics exist, empty: the partitions
    partitions = list(whole.ends)
    recs = stream()
    after = 0  # changelog records committed after the last refresh
    try:
        for i in range(0, len(recs), 5):
            engine.process(recs[i : i + 5])
            records = writer.records()
            producer.begin()
            write_changelog(producer, topics, records)
            producer.commit({}, None)
            refresher.add(records)
            after += len(records)
            if i < len(recs) * 2 // 3:
                refresher.close()
                refresher.refresh(consumer.end_offsets(partitions))
                after = 0
    finally:
        producer.close()
        consumer.close()
    refresher.close()
    restored = read_changelog(config, cache)
    assert canonical(restored.engine) == canonical(engine)
    # At least the tail; more when the offsets read right after a commit were below its end
    # (a read_committed end waits for the commit's markers): those records are read again,
    # which changes nothing. Far less than everything.
    whole = read_changelog(config)
    assert restored.cached > 0 and after <= restored.read < whole.read // 2
    assert canonical(whole.engine) == canonical(engine)

    # A cache that does not fit the changelog's records (here: a sums record whose document it
    # lost) is set aside and cleared; the whole changelog is read.
    with sqlite3.connect(cache.path) as db:
        db.execute("DELETE FROM records WHERE store = 'documents'")
    restored = read_changelog(config, cache)
    assert restored.cached == 0 and restored.read == whole_count(config)
    assert canonical(restored.engine) == canonical(engine)


def whole_count(config) -> int:
    return read_changelog(config).read
