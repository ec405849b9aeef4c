"""The Kafka client seam on the real broker, with both clients: what one writes the other reads,
keys land where the Java client puts them, and a transaction is all or nothing."""

from __future__ import annotations

import time

import pytest

from stream_nudge.config import load_config
from stream_nudge.kafka.client import ClientError, TopicPartition
from stream_nudge.kafka.common import make_admin, make_consumer, make_producer

pytestmark = pytest.mark.kafka

CLIENTS = ["confluent-kafka", "kafka-python"]


def _config(bootstrap: str, client: str, group: str = "seam"):
    return load_config(
        overrides={"kafka": {"bootstrap_servers": bootstrap, "client": client, "group_id": group}}
    )


def _read_all(consumer, topic: str, partitions: int, expected: int, timeout: float = 60.0):
    """Subscribe from the beginning and read until ``expected`` records (or the timeout)."""
    consumer.subscribe([topic], lambda tps: ({tp: None for tp in tps}, []), lambda tps: None)
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        got.extend(consumer.poll(500, 0.2))
    return got


@pytest.mark.parametrize("writer", CLIENTS)
@pytest.mark.parametrize("reader", CLIENTS)
def test_what_one_client_writes_the_other_reads_in_the_same_partitions(
    kafka_bootstrap, make_topic, writer, reader
):
    """Keys, values, tombstones and headers survive; a key goes to the partition the Java
    client's murmur2 hash names, with either client, so both put a document in one place."""
    topic = make_topic("seam", partitions=7)
    producer = make_producer(_config(kafka_bootstrap, writer))
    keys = [f"doc-{i}".encode() for i in range(200)]
    for i, key in enumerate(keys):
        value = None if i % 10 == 0 else f"v{i}".encode()
        producer.send(topic, key, value, [("generation", str(i).encode())])
    producer.flush()
    producer.close()
    consumer = make_consumer(_config(kafka_bootstrap, reader, group=f"g-{topic}"))
    try:
        got = _read_all(consumer, topic, 7, len(keys))
    finally:
        consumer.close()
    assert len(got) == len(keys)
    by_key = {m.key: m for m in got}
    for i, key in enumerate(keys):
        m = by_key[key]
        assert m.value == (None if i % 10 == 0 else f"v{i}".encode())
        assert dict(m.headers)["generation"] == str(i).encode()
        assert m.partition == _java_partition(key, 7)
        assert m.timestamp_ms is not None and m.timestamp_ms > 0
    # Offsets within each partition are 0, 1, 2, ... in the order written.
    for p in range(7):
        offsets = [m.offset for m in got if m.partition == p]
        assert offsets == list(range(len(offsets)))


def _java_partition(key: bytes, partitions: int) -> int:
    """The Java client's default partitioner: murmur2 of the key, positive, modulo the count."""
    from kafka.partitioner.default import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


@pytest.mark.parametrize("client", CLIENTS)
def test_a_transaction_is_all_or_nothing_for_a_read_committed_reader(
    kafka_bootstrap, make_topic, client
):
    topic, source = make_topic("tx"), make_topic("tx-in")
    config = _config(kafka_bootstrap, client, group=f"g-{topic}")
    # A consumer of the group whose offsets the transactions carry.
    group_member = make_consumer(config)
    group_member.subscribe([source], lambda tps: ({tp: None for tp in tps}, []), lambda tps: None)
    deadline = time.monotonic() + 60
    while not group_member.assignment() and time.monotonic() < deadline:
        group_member.poll(10, 0.2)
    producer = make_producer(config, transactional_id=f"tx-{topic}")
    tp = TopicPartition(source, 0)
    try:
        producer.begin()
        producer.send(topic, b"a", b"kept", [])
        producer.commit({tp: 5}, group_member.group_metadata())
        producer.begin()
        producer.send(topic, b"b", b"dropped", [])
        producer.flush()
        producer.abort()
        producer.begin()
        producer.send(topic, b"c", b"kept too", [])
        producer.commit({tp: 9}, group_member.group_metadata())
    finally:
        producer.close()
    reader = make_consumer(_config(kafka_bootstrap, client, group=f"r-{topic}"))
    try:
        got = _read_all(reader, topic, 1, 2, timeout=30)
        time.sleep(1.0)
        got.extend(reader.poll(100, 0.5))
    finally:
        reader.close()
    assert [m.value for m in got] == [b"kept", b"kept too"]
    # The offsets committed with the transactions are the group's.
    assert group_member.committed([tp]) == {tp: 9}
    group_member.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_a_second_producer_with_the_same_transactional_id_fences_the_first(
    kafka_bootstrap, make_topic, client
):
    topic = make_topic("fence")
    config = _config(kafka_bootstrap, client)
    zombie = make_producer(config, transactional_id=f"fence-{topic}")
    zombie.begin()
    zombie.send(topic, b"k", b"late", [])
    successor = make_producer(config, transactional_id=f"fence-{topic}")
    with pytest.raises(ClientError) as caught:
        zombie.commit({}, None)
    assert caught.value.fenced, caught.value
    successor.begin()
    successor.send(topic, b"k", b"current", [])
    successor.commit({}, None)
    successor.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_admin_creates_a_topic_once_and_lists_it(kafka_bootstrap, client):
    import uuid

    admin = make_admin(_config(kafka_bootstrap, client))
    name = f"admin-{uuid.uuid4().hex[:10]}"
    try:
        admin.create(name, 3, 1, {"cleanup.policy": "compact"})
        admin.create(name, 3, 1, {"cleanup.policy": "compact"})  # exists: nothing happens
        deadline = time.monotonic() + 30
        while name not in admin.topics() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert admin.topics()[name] == 3
    finally:
        admin.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_a_member_busy_for_longer_than_its_session_timeout_keeps_its_partitions(
    kafka_bootstrap, make_topic, client
):
    """The service's loop does not poll while it writes a checkpoint (or, later, restores):
    the client's own thread must keep the member's heartbeats going, or the group would evict
    it after the session timeout and take its partitions away."""
    topic = make_topic("busy")
    config = load_config(
        overrides={
            "kafka": {
                "bootstrap_servers": kafka_bootstrap,
                "client": client,
                "group_id": f"g-{topic}",
                "session_timeout_ms": 6000,  # the broker's minimum
            }
        }
    )
    consumer = make_consumer(config)
    revoked: list = []
    consumer.subscribe([topic], lambda tps: ({tp: None for tp in tps}, []), revoked.extend)
    try:
        deadline = time.monotonic() + 60
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(10, 0.2)
        assert consumer.assignment() == {TopicPartition(topic, 0)}
        time.sleep(10.0)  # busy: no poll for longer than the session timeout
        for _ in range(5):
            consumer.poll(10, 0.2)
        assert consumer.assignment() == {TopicPartition(topic, 0)} and revoked == []
    finally:
        consumer.close()
