"""The real broker works as the rest of the project assumes: ordering, exactly-once delivery, compaction."""

from __future__ import annotations

import time
from collections import defaultdict

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

pytestmark = pytest.mark.kafka


def test_round_trip_10000_keyed_json_messages_over_3_partitions(kafka_bootstrap, make_topic):
    topic = make_topic("roundtrip", partitions=3)
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    n = 10_000
    for i in range(n):
        key = f"key-{i % 97}".encode()
        producer.send(topic, key=key, value=orjson.dumps({"seq": i, "key": i % 97}))
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    seen: dict[int, list[int]] = defaultdict(list)
    partition_of_key: dict[int, int] = {}
    received = 0
    deadline = time.monotonic() + 120
    while received < n and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=1000).items():
            for record in records:
                message = orjson.loads(record.value)
                assert record.key == f"key-{message['key']}".encode()
                # One key always lands in one partition.
                assert partition_of_key.setdefault(message["key"], tp.partition) == tp.partition
                seen[tp.partition].append(message["seq"])
                received += 1
    consumer.close()

    all_seqs = sorted(s for seqs in seen.values() for s in seqs)
    assert all_seqs == list(range(n)), "every message exactly once"
    assert len(seen) == 3, "the keys spread over all 3 partitions"
    for seqs in seen.values():
        assert seqs == sorted(seqs), "order kept within a partition"


def test_compacted_topic_reports_its_cleanup_policy(kafka_admin, make_topic):
    topic = make_topic("compacted", partitions=2, cleanup_policy="compact")
    described = kafka_admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    assert described["topic"][topic]["cleanup.policy"]["value"] == "compact"
    meta = kafka_admin.describe_topics([topic])
    assert len(meta[0]["partitions"]) == 2
