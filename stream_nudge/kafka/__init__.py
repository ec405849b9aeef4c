"""Kafka edges: a source over the docs and events topics, a sink to the updates and dead-letter
topics, topic set-up; all through the client seam (``client.py``) on confluent-kafka or
kafka-python."""

from stream_nudge.kafka.admin import committed_offsets, ensure_topics, last_generation
from stream_nudge.kafka.changelog import ensure_changelog, read_changelog
from stream_nudge.kafka.client import ClientError
from stream_nudge.kafka.committer import TransactionalCommitter
from stream_nudge.kafka.common import is_configuration_error
from stream_nudge.kafka.sink import KafkaSink, SinkError
from stream_nudge.kafka.source import KafkaSource

__all__ = [
    "ClientError",
    "KafkaSink",
    "KafkaSource",
    "SinkError",
    "TransactionalCommitter",
    "committed_offsets",
    "ensure_changelog",
    "ensure_topics",
    "is_configuration_error",
    "last_generation",
    "read_changelog",
]
