"""The Kafka sink: updates keyed by document id (compacted topic), dead letters with their reason.

The producer runs in the service's process, through the client seam. :meth:`KafkaSink.write`
encodes the engine's changes and queues them (the client sends them from its own thread);
:meth:`KafkaSink.flush` waits until everything queued is acknowledged, or raises the first
failure. A message is never reported delivered that was not.
"""

from __future__ import annotations

import contextlib

from stream_nudge.config import Config
from stream_nudge.engine import Changes
from stream_nudge.kafka.client import ClientError, Producer
from stream_nudge.kafka.common import make_producer
from stream_nudge.messages import encode_dead_letter, encode_output

__all__ = ["KafkaSink", "SinkError"]


class SinkError(ClientError):
    """Messages could not be delivered; what was sent since the last flush may be lost."""


class KafkaSink:
    """Idempotent producer, acks=all: a delivered message is written once and durably."""

    def __init__(self, config: Config, producer: Producer | None = None):
        k = config.kafka
        self.updates_topic, self.dead_letters_topic = k.topics.updates, k.topics.dead_letters
        self.updates_sent = 0
        self.dead_letters_sent = 0
        self.producer = producer or make_producer(config)

    def write(self, changes: Changes) -> None:
        """Tombstones, then updates (as the engine ordered them), each with its generation in a
        header; then dead letters, with their reason."""
        send = self.producer.send
        topic = self.updates_topic
        for message in encode_output(changes.tombstones, changes.updates):
            headers = [("generation", str(message.generation).encode())]
            send(topic, message.key.encode(), message.value, headers)
        for letter in changes.dead_letters:
            headers = [("reason", letter.reason.encode())]
            send(self.dead_letters_topic, letter.record.key, encode_dead_letter(letter), headers)
        self.updates_sent += changes.message_count
        self.dead_letters_sent += len(changes.dead_letters)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything written is acknowledged; SinkError if anything failed."""
        try:
            self.producer.flush(timeout)
        except ClientError as exc:
            raise SinkError(f"a message was not delivered: {exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(ClientError):
            self.producer.close()
