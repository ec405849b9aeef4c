"""The pieces of the Kafka edges that need no broker: the producer's memoised key hash."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner import DefaultPartitioner

from stream_nudge.kafka.kafkapython import _MemoPartitioner


class _Metadata:
    """The three questions a partitioner asks of kafka-python's cluster metadata."""

    def __init__(self, counts: dict[str, int]):
        self.counts = counts

    def topics(self):
        return set(self.counts)

    def partitions_for_topic(self, topic):
        return set(range(self.counts[topic]))

    def available_partitions_for_topic(self, topic):
        return self.partitions_for_topic(topic)


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.binary(max_size=40), min_size=1, max_size=30),
    counts=st.lists(st.integers(1, 64), min_size=1, max_size=4),
)
def test_memo_partitioner_agrees_with_kafka_pythons_as_the_partition_count_changes(keys, counts):
    memo, plain = _MemoPartitioner(), DefaultPartitioner()
    for count in counts:  # a topic that gains (or is recreated with other) partitions
        cluster = _Metadata({"updates": count, "other": count + 1})
        for key in keys + keys:  # the second time from the memo
            for topic in ("updates", "other"):
                got = memo.partition(topic, None, key, None, None, cluster)
                assert got == plain.partition(topic, None, key, None, None, cluster)
