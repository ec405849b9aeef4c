"""The Kafka source: the docs and events topics as one consumer group, offsets from the checkpoint.

The consumer runs in a child process (see :mod:`stream_nudge.kafka.worker`), a batch or two ahead:
while the engine works on a batch, the child already polls (fetches and parses) the next ones. The parent keeps
the truth about positions: the next offset of every partition, advanced only by the records it has
handed to the engine. Documents go first: while any docs partition has records not yet consumed,
the child pauses the events partitions, so clicks meet their documents (as in a replay, which reads
all documents first). Before the child gives partitions up in a rebalance, it asks the parent to
checkpoint (``on_revoke``) and waits until it has.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from stream_nudge.config import Config
from stream_nudge.kafka.common import client_settings
from stream_nudge.kafka.worker import ChildGone, Worker, child_setup, receive_command, tell
from stream_nudge.messages import Record

__all__ = ["KafkaSource", "SourceError"]

log = logging.getLogger(__name__)

# How often the end offsets (for lag and for "documents first") are asked of the broker.
_END_OFFSETS_EVERY_S = 1.0
# How long to wait for the consumer process to answer, beyond kafka-python's own timeouts
# (a poll takes at most poll_timeout_ms, but a rebalance or a broker outage can hold it longer).
_ANSWER_TIMEOUT_S = 600.0
# Polls asked of the child ahead of the engine: while the engine works on one batch, the child
# fetches and parses the next ones (kafka-python fetches only inside poll). Each holds at most
# max_poll_records records. Their records count only once the engine has had them, so a batch
# polled ahead and dropped (at shutdown, or on a restart) is read again from the checkpoint.
_POLLS_AHEAD = 2


class SourceError(KafkaError):
    """The consumer process reported a Kafka error, or stopped."""


class KafkaSource:
    """``next_batch`` / ``position`` over Kafka, as :class:`stream_nudge.sources.Source` asks."""

    def __init__(
        self,
        config: Config,
        offsets: dict | None = None,
        on_revoke: Callable[[], None] | None = None,
    ):
        k = config.kafka
        self.config = config
        self.kinds = {k.topics.docs: "docs", k.topics.events: "events"}
        # The next offset to hand to the engine, per partition: from the checkpoint, then advanced
        # by every record returned. This, not the group's committed offsets, is the truth.
        self.next_offsets: dict[TopicPartition, int] = {}
        for topic, parts in (offsets or {}).items():
            for partition, offset in parts.items():
                self.next_offsets[TopicPartition(topic, int(partition))] = int(offset)
        self.on_revoke = on_revoke
        self._lag: dict[TopicPartition, int] = {}
        self._assigned = 0
        self._asked = 0
        settings = dict(
            client_settings(config),
            group_id=k.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=k.max_poll_records,
            fetch_max_bytes=k.fetch_max_bytes,
            max_partition_fetch_bytes=k.max_partition_fetch_bytes,
        )
        start = {(tp.topic, tp.partition): o for tp, o in self.next_offsets.items()}
        self._worker = Worker(
            _consume,
            (settings, self.kinds, k.topics.docs, k.poll_timeout_ms, start),
            "sn-consumer",
            (config.logging.level, config.logging.format),
        )
        try:
            self._answer("ready")
        except (ChildGone, KafkaError):
            self._worker.stop()
            raise

    # --- the Source interface ---------------------------------------------------------------

    def next_batch(self, max_records: int) -> list[Record]:
        # The child polls the next batches while the engine works on this one.
        while self._asked < _POLLS_AHEAD:
            self._ask(max_records)
        groups = self._answer("batch")
        docs, events = [], []
        for topic, partition, kind, offsets, stamps, keys, values in groups:
            target = docs if kind == "docs" else events
            for offset, stamp, key, value in zip(offsets, stamps, keys, values, strict=True):
                target.append(
                    Record(
                        kind,
                        value,
                        position=(topic, partition, offset),
                        timestamp=stamp / 1000.0 if stamp is not None and stamp >= 0 else None,
                        key=key,
                    )
                )
            self.next_offsets[TopicPartition(topic, partition)] = offsets[-1] + 1
        return docs + events

    def position(self) -> dict:
        out: dict[str, dict[str, int]] = {}
        for tp, offset in self.next_offsets.items():
            out.setdefault(tp.topic, {})[str(tp.partition)] = offset
        return out

    def close(self) -> None:
        """Stop the consumer process (batches it polled ahead are dropped: their offsets are not ours)."""
        try:
            self._worker.send(("close",))
            self._answer("closed", timeout=60.0, checkpoint_on_revoke=False)
        except (ChildGone, KafkaError) as exc:
            log.debug("closing the consumer: %s", exc)
        self._worker.stop()

    # --- lag, ordering, commits --------------------------------------------------------------

    def lag(self) -> dict[TopicPartition, int]:
        """Records not yet consumed per assigned partition, as of the latest batch."""
        return dict(self._lag)

    def caught_up(self) -> bool:
        """The latest batch was empty and left no assigned partition behind its end."""
        lag = self._lag
        return bool(lag) and len(lag) == self._assigned and not any(lag.values())

    def commit(self) -> None:
        """Tell the group where we are (for lag tools); the checkpoint stays the source of truth."""
        offsets = {(tp.topic, tp.partition): o for tp, o in self.next_offsets.items()}
        if offsets:
            self._worker.send(("commit", offsets))

    # --- talking to the consumer process -----------------------------------------------------

    def _ask(self, max_records: int) -> None:
        self._worker.send(("poll", max_records))
        self._asked += 1

    def _answer(self, expected: str, timeout: float = _ANSWER_TIMEOUT_S, checkpoint_on_revoke=True):
        """Wait for the child's answer, checkpointing on its way if it reports a revocation."""
        while True:
            message = self._worker.receive(timeout)
            kind = message[0]
            if kind == "revoked":
                try:
                    if checkpoint_on_revoke and self.on_revoke is not None:
                        # Checkpoint before the partitions are given up, so that their next owner
                        # (or our next assignment) starts exactly after what the state reflects.
                        self.on_revoke()
                        log.info("partitions revoked: checkpoint written before giving them up")
                finally:
                    # Even if the checkpoint failed (the service then restarts from the previous
                    # one): the child must not hold the rebalance, and our close, any longer.
                    self._worker.send(("revoke_done",))
            elif kind == "error":
                raise SourceError(message[1])
            elif kind == expected:
                if kind == "batch":
                    self._asked -= 1
                    _, groups, lag, assigned = message
                    self._lag = {TopicPartition(t, p): n for (t, p), n in lag.items()}
                    self._assigned = assigned
                    return groups
                return message[1:]
            # else: a batch polled ahead while closing; dropped


class _Consumer:
    """The child's side: the kafka-python consumer and what it knows of positions and ends."""

    def __init__(self, connection, settings, kinds, docs_topic, poll_timeout_ms, start):
        self.connection = connection
        self.kinds = kinds
        self.docs_topic = docs_topic
        self.poll_timeout_ms = poll_timeout_ms
        self.next_offsets = {TopicPartition(t, p): o for (t, p), o in start.items()}
        self.end_offsets: dict[TopicPartition, int] = {}
        self.ends_at = 0.0
        self.paused: set[TopicPartition] = set()
        self.closing = False
        # Commands that arrived while a rebalance waited for the parent's checkpoint (the parent
        # asks for polls ahead): served, in order, once the rebalance is over.
        self.deferred: list = []
        self.consumer = KafkaConsumer(**settings)
        self.consumer.subscribe(list(kinds), listener=_Listener(self))

    def poll(self, max_records: int):
        self.documents_first()
        polled = self.consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=max_records)
        groups = []
        for tp, messages in polled.items():
            if not messages:
                continue
            groups.append(
                (
                    tp.topic,
                    tp.partition,
                    self.kinds.get(tp.topic, "events"),
                    [m.offset for m in messages],
                    [m.timestamp for m in messages],
                    [m.key for m in messages],
                    [m.value for m in messages],
                )
            )
            self.next_offsets[tp] = messages[-1].offset + 1
        # An empty poll may mean "caught up": then the ends are asked afresh.
        self.refresh_end_offsets(force=not groups)
        assigned = self.consumer.assignment()
        lag = {}
        for tp in assigned:
            end = self.end_offsets.get(tp)
            if end is not None:
                lag[(tp.topic, tp.partition)] = max(0, end - self.next_offsets.get(tp, 0))
        return groups, lag, len(assigned)

    def refresh_end_offsets(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.ends_at < _END_OFFSETS_EVERY_S:
            return
        assigned = list(self.consumer.assignment())
        if assigned:
            self.end_offsets.update(self.consumer.end_offsets(assigned))
        self.ends_at = now

    def documents_first(self) -> None:
        assigned = self.consumer.assignment()
        if not assigned:
            return
        self.refresh_end_offsets(force=bool(self.paused))
        behind = any(
            tp.topic == self.docs_topic
            and self.end_offsets.get(tp, 0) > self.next_offsets.get(tp, 0)
            for tp in assigned
        )
        events = {tp for tp in assigned if tp.topic != self.docs_topic}
        if behind and events - self.paused:
            self.consumer.pause(*events)
            self.paused |= events
        elif not behind and self.paused:
            self.consumer.resume(*self.paused)
            self.paused.clear()

    def commit(self, offsets: dict) -> None:
        assigned = self.consumer.assignment()
        chosen = {
            tp: OffsetAndMetadata(o, "", -1)
            for (t, p), o in offsets.items()
            if (tp := TopicPartition(t, p)) in assigned
        }
        if chosen:
            try:
                self.consumer.commit(chosen)
            except Exception as exc:  # informational only: a failed commit loses nothing
                log.warning("could not commit offsets to the group: %s", exc)

    def close(self) -> None:
        """Leave the group without committing (and without a revocation's checkpoint wait)."""
        self.closing = True
        self.consumer.close(autocommit=False)

    def wait_for_checkpoint(self) -> None:
        """Tell the parent partitions are being revoked, and wait until it has checkpointed.

        Anything else it sends meanwhile (polls asked ahead, the commit that ends its checkpoint,
        a close, or its being gone) is served after the rebalance: kafka-python runs this
        listener on its network thread, where a commit cannot wait for its answer. A close ends
        the wait too (the parent then has no checkpoint to write).

        Known limit: the wait holds kafka-python's network thread, so no heartbeat goes out
        until the parent's checkpoint is written; a checkpoint longer than the group's session
        timeout (45 s by default) gets the member evicted, and the group rebalances again.
        """
        tell(self.connection, ("revoked",))
        while True:
            command = receive_command(self.connection)
            if command is not None and command[0] == "revoke_done":
                return
            self.deferred.append(command)
            if command is None or command[0] == "close":
                return


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: _Consumer):
        self.owner = owner

    def on_partitions_revoked(self, revoked):
        if revoked and not self.owner.closing:
            self.owner.wait_for_checkpoint()
        self.owner.paused -= set(revoked)

    def on_partitions_assigned(self, assigned):
        owner = self.owner
        consumer = owner.consumer
        for tp in assigned:
            offset = owner.next_offsets.get(tp)
            if offset is None:
                consumer.seek_to_beginning(tp)
                owner.next_offsets[tp] = 0
            else:
                consumer.seek(tp, offset)
        # Events wait until the documents are caught up (decided at the next poll): paused here,
        # before the first fetch, so that no event can overtake the documents at start.
        events = [tp for tp in assigned if owner.kinds.get(tp.topic) == "events"]
        if events:
            consumer.pause(*events)
            owner.paused |= set(events)
        log.info("assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(assigned)))


def _consume(connection, parent_pid, setup, settings, kinds, docs_topic, poll_timeout_ms, start):
    """The consumer process: poll when asked, commit when told, until told to close."""
    child_setup(parent_pid, setup)
    try:
        owner = _Consumer(connection, settings, kinds, docs_topic, poll_timeout_ms, start)
    except Exception as exc:
        tell(connection, ("error", f"{exc.__class__.__name__}: {exc}"))
        return
    tell(connection, ("ready",))
    while True:
        command = owner.deferred.pop(0) if owner.deferred else receive_command(connection)
        if command is None:  # the parent is gone
            owner.close()
            return
        op = command[0]
        try:
            if op == "poll":
                connection.send(("batch", *owner.poll(command[1])))
            elif op == "commit":
                owner.commit(command[1])
            elif op == "close":
                owner.close()
                tell(connection, ("closed",))
                return
        except OSError:  # the parent is gone: nothing to tell it
            owner.close()
            return
        except Exception as exc:
            tell(connection, ("error", f"{exc.__class__.__name__}: {exc}"))
