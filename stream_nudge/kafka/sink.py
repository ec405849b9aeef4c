"""The Kafka sink: updates keyed by document id (compacted topic), dead letters with their reason."""

from __future__ import annotations

from kafka import KafkaProducer

from stream_nudge.config import Config
from stream_nudge.engine import Output
from stream_nudge.kafka.common import client_settings
from stream_nudge.messages import encode_dead_letter

__all__ = ["KafkaSink", "SinkError"]


class SinkError(RuntimeError):
    """Messages could not be delivered; what was sent since the last flush may be lost."""


class KafkaSink:
    """Idempotent producer, acks=all: a delivered message is written once and durably."""

    def __init__(self, config: Config):
        k = config.kafka
        self.updates_topic = k.topics.updates
        self.dead_letter_topic = k.topics.dead_letters
        self.producer = KafkaProducer(
            **client_settings(config),
            acks="all",
            enable_idempotence=True,
            linger_ms=k.linger_ms,
            batch_size=k.batch_size,
            max_request_size=k.max_request_size,
            compression_type=k.compression_type,
        )
        self._futures = []
        self.updates_sent = 0
        self.dead_letters_sent = 0

    def write(self, output: Output) -> None:
        send = self.producer.send
        for key, value, _, generation in output.messages:
            headers = [("generation", str(generation).encode())]
            self._futures.append(
                send(self.updates_topic, key=key.encode(), value=value, headers=headers)
            )
        for letter in output.dead_letters:
            headers = [("reason", letter.reason.encode())]
            self._futures.append(
                send(
                    self.dead_letter_topic,
                    key=letter.record.key,
                    value=encode_dead_letter(letter),
                    headers=headers,
                )
            )
        self.updates_sent += len(output.messages)
        self.dead_letters_sent += len(output.dead_letters)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything written is acknowledged; SinkError if anything failed."""
        self.producer.flush(timeout=timeout)
        futures, self._futures = self._futures, []
        for future in futures:
            if future.failed():
                raise SinkError(f"a message was not delivered: {future.exception!r}")
            if not future.is_done:
                raise SinkError("messages still in flight after flush")

    def close(self) -> None:
        self.producer.close(timeout=10)
