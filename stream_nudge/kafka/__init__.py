"""Kafka edges: a source over the docs and events topics, a sink to the updates and dead-letter
topics, topic set-up; all through the client seam (``client.py``) on confluent-kafka or
kafka-python."""

from stream_nudge.kafka.admin import ensure_topics, last_generation
from stream_nudge.kafka.client import ClientError
from stream_nudge.kafka.common import is_configuration_error
from stream_nudge.kafka.sink import KafkaSink, SinkError
from stream_nudge.kafka.source import KafkaSource

__all__ = [
    "ClientError",
    "KafkaSink",
    "KafkaSource",
    "SinkError",
    "ensure_topics",
    "is_configuration_error",
    "last_generation",
]
