"""The Kafka client seam: what stream-nudge asks of a Kafka client, in our own types.

Two implementations: :mod:`stream_nudge.kafka.confluent` (confluent-kafka, librdkafka; the
default) and :mod:`stream_nudge.kafka.kafkapython` (kafka-python 3.x), chosen by ``kafka.client``.
Everything above this package sees only what is defined here: :class:`TopicPartition`,
:class:`Message`, :class:`ClientError`, and the :class:`Consumer`, :class:`Producer` and
:class:`Admin` protocols. Both clients run in the service's own process; their network threads
keep heartbeats flowing whatever the loop is doing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple, Protocol

from stream_nudge.config import Config

__all__ = [
    "Admin",
    "ClientError",
    "Consumer",
    "Message",
    "Producer",
    "TopicPartition",
    "clients",
]


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class Message(NamedTuple):
    """One consumed record."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None  # the record's timestamp, None when it has none
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None


class ClientError(Exception):
    """The broker or the client failed. ``configuration``: the client refused its settings, so
    retrying cannot help; ``fenced``: another member took over this member's transactional id
    (this one must stop writing)."""

    def __init__(self, message: str, configuration: bool = False, fenced: bool = False):
        super().__init__(message)
        self.configuration = configuration
        self.fenced = fenced


class Consumer(Protocol):
    def subscribe(
        self,
        topics: list[str],
        on_assign: Callable[
            [list[TopicPartition]], tuple[dict[TopicPartition, int | None], list[TopicPartition]]
        ],
        on_revoke: Callable[[list[TopicPartition]], None],
    ) -> None:
        """Join the group. ``on_assign`` returns where to start each assigned partition (None:
        at its beginning) and which of them to hold paused from the start (before any fetch);
        both callbacks run inside :meth:`poll`, on the caller's thread."""

    def assign(self, starts: dict[TopicPartition, int]) -> None:
        """Read these partitions from these offsets, outside any group."""

    def poll(self, max_records: int, timeout_s: float) -> list[Message]: ...

    def assignment(self) -> set[TopicPartition]: ...

    def pause(self, partitions: Iterable[TopicPartition]) -> None: ...

    def resume(self, partitions: Iterable[TopicPartition]) -> None: ...

    def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]: ...

    def committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offsets (None where it has none)."""

    def position(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The offset the next record read from each partition will have at least (past
        transaction markers and aborted records already skipped)."""

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit offsets to the group, synchronously (outside transactions)."""

    def group_metadata(self) -> object:
        """What a transactional producer sends with the offsets (fences zombie members)."""

    def close(self) -> None: ...


class Producer(Protocol):
    def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        """Queue one record (keyed records go to the partition of the key's murmur2 hash, as
        the Java client's)."""

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every queued record is acknowledged; ClientError if any failed."""

    def begin(self) -> None:
        """Start a transaction (transactional producers only)."""

    def commit(self, offsets: dict[TopicPartition, int], group_metadata: object) -> None:
        """Commit the transaction with the input offsets it consumed: all or nothing."""

    def abort(self) -> None: ...

    def close(self) -> None: ...


class Admin(Protocol):
    def topics(self) -> dict[str, int]:
        """Existing topics and their partition counts."""

    def create(self, name: str, partitions: int, replication: int, configs: dict) -> None:
        """Create a topic (nothing if it exists already)."""

    def close(self) -> None: ...


class Clients(NamedTuple):
    """One implementation's constructors."""

    consumer: Callable[..., Consumer]
    producer: Callable[..., Producer]
    admin: Callable[..., Admin]


def clients(config: Config) -> Clients:
    """The implementation ``kafka.client`` names (imported only when chosen)."""
    if config.kafka.client == "kafka-python":
        from stream_nudge.kafka import kafkapython as impl
    else:
        from stream_nudge.kafka import confluent as impl
    return Clients(impl.KafkaConsumer, impl.KafkaProducer, impl.KafkaAdmin)
