"""The Kafka sink: updates keyed by document id (compacted topic), dead letters with their reason.

The producer runs in a child process (see :mod:`stream_nudge.kafka.worker`): :meth:`KafkaSink.write`
hands it the ready-made messages over a pipe (which blocks when the child falls behind, so memory
stays bounded) and returns; :meth:`KafkaSink.flush` waits until the child reports every message sent
so far acknowledged, or the first failure. A message is never reported delivered that was not.
"""

from __future__ import annotations

import logging

from kafka import KafkaProducer
from kafka.partitioner import DefaultPartitioner

from stream_nudge.config import Config
from stream_nudge.engine import Changes
from stream_nudge.kafka.common import client_settings
from stream_nudge.kafka.worker import ChildGone, Worker, child_setup, read_ahead, tell
from stream_nudge.messages import encode_dead_letter

__all__ = ["KafkaSink", "SinkError"]

log = logging.getLogger(__name__)

# How long to wait for the producer process to connect, beyond kafka-python's own timeouts.
_START_TIMEOUT_S = 120.0


class SinkError(RuntimeError):
    """Messages could not be delivered; what was sent since the last flush may be lost."""


class KafkaSink:
    """Idempotent producer, acks=all: a delivered message is written once and durably."""

    def __init__(self, config: Config):
        k = config.kafka
        settings = dict(
            client_settings(config),
            acks="all",
            enable_idempotence=True,
            linger_ms=k.linger_ms,
            batch_size=k.batch_size,
            max_request_size=k.max_request_size,
            compression_type=k.compression_type,
        )
        self.topics = (k.topics.updates, k.topics.dead_letters)
        self.updates_sent = 0
        self.dead_letters_sent = 0
        logs = (config.logging.level, config.logging.format)
        self._worker = Worker(_produce, (settings, self.topics), "sn-producer", logs)
        try:
            reply = self._reply(_START_TIMEOUT_S)
        except SinkError:
            self._worker.stop()
            raise
        if reply[0] != "ready":
            self._worker.stop()
            raise SinkError(f"the producer could not start: {reply[1]}")

    def write(self, changes: Changes) -> None:
        """Hand the changes to the producer process: updates travel unencoded (it encodes them)."""
        tombstones = [(0, t.id.encode(), None, t.generation) for t in changes.tombstones]
        letters = [
            (1, letter.record.key, encode_dead_letter(letter), letter.reason)
            for letter in changes.dead_letters
        ]
        updates = changes.updates
        if tombstones or letters or updates is not None:
            try:
                self._worker.send(("send", tombstones, updates, letters))
            except ChildGone as exc:
                raise SinkError(str(exc)) from exc
        self.updates_sent += changes.message_count
        self.dead_letters_sent += len(changes.dead_letters)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything written is acknowledged; SinkError if anything failed."""
        try:
            self._worker.send(("flush", timeout))
        except ChildGone as exc:
            raise SinkError(str(exc)) from exc
        reply = self._reply(None if timeout is None else timeout + 30.0)
        if reply[0] != "flushed" or reply[1] is not None:
            raise SinkError(f"a message was not delivered: {reply[1]}")

    def close(self) -> None:
        try:
            self._worker.send(("close",))
            self._reply(30.0)
        except (ChildGone, SinkError) as exc:
            log.debug("closing the producer: %s", exc)
        self._worker.stop()

    def _reply(self, timeout: float | None):
        try:
            return self._worker.receive(timeout)
        except ChildGone as exc:
            raise SinkError(str(exc)) from exc


class _MemoPartitioner(DefaultPartitioner):
    """kafka-python's key hash (murmur2, as the Java client's), remembered per key.

    Hashing a key costs kafka-python several microseconds in Python, and the same documents are
    updated again and again. The memo is keyed by the partition count too, so that a topic that
    gains partitions is hashed afresh.
    """

    def __init__(self):
        self.memo: dict[tuple, int] = {}

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
        if serialized_key is None:
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        parts = cluster.partitions_for_topic(topic)
        memo_key = (topic, serialized_key, len(parts) if parts else 0)
        found = self.memo.get(memo_key)
        if found is None:
            if len(self.memo) > 1_000_000:
                self.memo.clear()
            found = super().partition(topic, key, serialized_key, value, serialized_value, cluster)
            self.memo[memo_key] = found
        return found


def _produce(connection, parent_pid: int, setup, settings: dict, topics: tuple[str, str]) -> None:
    """The producer process: send what the parent writes, report on flush, until told to close."""
    child_setup(parent_pid, setup)
    try:
        producer = KafkaProducer(**settings, partitioner=_MemoPartitioner())
    except Exception as exc:
        tell(connection, ("error", f"{exc.__class__.__name__}: {exc}"))
        return
    tell(connection, ("ready", None))
    failures: list[str] = []
    send = producer.send

    def failed(exc) -> None:
        failures.append(f"{exc.__class__.__name__}: {exc}")

    commands = read_ahead(connection)
    while True:
        command = commands.get()
        if command is None:  # the parent is gone: nothing more to send for it
            producer.close(timeout=0)
            return
        op = command[0]
        if op == "send":
            if failures:  # the parent restarts from its checkpoint at the next flush anyway
                continue
            _, tombstones, updates, letters = command
            try:
                # Tombstones first, then updates, as the engine ordered them; then dead letters.
                messages = tombstones
                if updates is not None:
                    messages = messages + [
                        (0, key.encode(), value, generation)
                        for key, value, _, generation in updates.encoded()
                    ]
                for topic, key, value, tag in messages + letters:
                    header = (
                        ("generation", str(tag).encode())
                        if topic == 0
                        else ("reason", tag.encode())
                    )
                    send(topics[topic], key=key, value=value, headers=[header]).add_errback(failed)
            except Exception as exc:
                failed(exc)
        elif op == "flush":
            try:
                producer.flush(timeout=command[1])
            except Exception as exc:
                failed(exc)
            tell(connection, ("flushed", failures[0] if failures else None))
            failures.clear()
        elif op == "close":
            producer.close(timeout=10)
            tell(connection, ("closed", None))
            return
