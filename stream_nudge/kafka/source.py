"""The Kafka source: the docs and events topics as one consumer group, offsets from the checkpoint.

The consumer runs in the service's process, through the client seam (``kafka/client.py``). The
source keeps the truth about positions: the next offset of every partition, advanced only by the
records it has handed to the engine, and restored from the checkpoint. Documents go first: while
any docs partition has records not yet consumed, the events partitions are paused, so clicks meet
their documents (as in a replay, which reads all documents first). Before partitions are given up
in a rebalance, ``on_revoke`` runs (the service checkpoints there); the client's own thread keeps
the member's heartbeats going meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from stream_nudge.config import Config
from stream_nudge.kafka.client import Consumer, TopicPartition
from stream_nudge.kafka.common import make_consumer
from stream_nudge.messages import Record

__all__ = ["KafkaSource"]

log = logging.getLogger(__name__)

# How often the end offsets (for lag and for "documents first") are asked of the broker.
_END_OFFSETS_EVERY_S = 1.0


class KafkaSource:
    """``next_batch`` / ``position`` over Kafka, as :class:`stream_nudge.sources.Source` asks."""

    def __init__(
        self,
        config: Config,
        offsets: dict | None = None,
        on_revoke: Callable[[], None] | None = None,
        consumer: Consumer | None = None,
    ):
        k = config.kafka
        self.kinds = {k.topics.docs: "docs", k.topics.events: "events"}
        self.docs_topic = k.topics.docs
        self.poll_timeout_s = k.poll_timeout_ms / 1000.0
        # The next offset to hand to the engine, per partition: from the checkpoint, then advanced
        # by every record returned. This, not the group's committed offsets, is the truth.
        self.next_offsets: dict[TopicPartition, int] = {}
        for topic, parts in (offsets or {}).items():
            for partition, offset in parts.items():
                self.next_offsets[TopicPartition(topic, int(partition))] = int(offset)
        self.on_revoke = on_revoke
        self.end_offsets: dict[TopicPartition, int] = {}
        self._ends_at = 0.0
        self._paused: set[TopicPartition] = set()
        self._lag: dict[TopicPartition, int] = {}
        self._closing = False
        self._revoke_failed: Exception | None = None
        self.consumer = consumer or make_consumer(config)
        self.consumer.subscribe(list(self.kinds), self._assigned, self._revoked)

    # --- the Source interface ---------------------------------------------------------------

    def next_batch(self, max_records: int) -> list[Record]:
        self._documents_first()
        messages = self.consumer.poll(max_records, self.poll_timeout_s)
        if self._revoke_failed is not None:
            failed, self._revoke_failed = self._revoke_failed, None
            raise failed
        docs, events = [], []
        kinds = self.kinds
        for m in messages:
            kind = kinds.get(m.topic, "events")
            stamp = m.timestamp_ms
            record = Record(
                kind,
                m.value,
                position=(m.topic, m.partition, m.offset),
                timestamp=stamp / 1000.0 if stamp is not None and stamp >= 0 else None,
                key=m.key,
            )
            (docs if kind == "docs" else events).append(record)
            self.next_offsets[TopicPartition(m.topic, m.partition)] = m.offset + 1
        # An empty poll may mean "caught up": then the ends are asked afresh.
        self._refresh_end_offsets(force=not messages)
        self._lag = {
            tp: max(0, end - self.next_offsets.get(tp, 0))
            for tp in self.consumer.assignment()
            if (end := self.end_offsets.get(tp)) is not None
        }
        return docs + events

    def position(self) -> dict:
        out: dict[str, dict[str, int]] = {}
        for tp, offset in self.next_offsets.items():
            out.setdefault(tp.topic, {})[str(tp.partition)] = offset
        return out

    def close(self) -> None:
        """Leave the group without committing (and without a revocation's checkpoint)."""
        self._closing = True
        try:
            self.consumer.close()
        except Exception as exc:  # closing a broken client must not stop a restart
            log.debug("closing the consumer: %s", exc)

    def assignment(self) -> set[TopicPartition]:
        """The partitions this member holds now."""
        return self.consumer.assignment()

    def group_metadata(self) -> object:
        """What a transaction commits with its offsets (the group's generation: fences a member
        the group has replaced)."""
        return self.consumer.group_metadata()

    # --- lag, ordering, commits --------------------------------------------------------------

    def lag(self) -> dict[TopicPartition, int]:
        """Records not yet consumed per assigned partition, as of the latest batch."""
        return dict(self._lag)

    def caught_up(self) -> bool:
        """The latest batch left no assigned partition behind its end."""
        lag = self._lag
        assigned = self.consumer.assignment()
        return bool(assigned) and len(lag) == len(assigned) and not any(lag.values())

    def commit(self) -> None:
        """Tell the group where we are (for lag tools); the checkpoint stays the source of truth."""
        assigned = self.consumer.assignment()
        offsets = {tp: o for tp, o in self.next_offsets.items() if tp in assigned}
        try:
            self.consumer.commit(offsets)
        except Exception as exc:  # informational only: a failed commit loses nothing
            log.warning("could not commit offsets to the group: %s", exc)

    # --- the group --------------------------------------------------------------------------

    def _assigned(self, partitions: list[TopicPartition]):
        """Start each partition where the state says (its beginning if the state has never seen
        it); hold the events back until the documents are caught up (decided at the next poll):
        paused before the first fetch, so that no event can overtake the documents at start."""
        starts = {}
        for tp in partitions:
            offset = self.next_offsets.get(tp)
            if offset is None:
                self.next_offsets[tp] = 0
            starts[tp] = offset
        held = [tp for tp in partitions if self.kinds.get(tp.topic) == "events"]
        self._paused |= set(held)
        log.info("assigned %s", ", ".join(f"{t}[{p}]" for t, p in sorted(partitions)))
        return starts, held

    def _revoked(self, partitions: list[TopicPartition]) -> None:
        if partitions and not self._closing and self.on_revoke is not None:
            # Checkpoint before the partitions are given up, so that their next owner (or our
            # next assignment) starts exactly after what the state reflects. A failure must not
            # hold the rebalance: it is raised once the poll returns (the service then restarts
            # from its last checkpoint). Not from here: a client may swallow what its callback
            # raises.
            try:
                self.on_revoke()
                log.info("partitions revoked: checkpoint written before giving them up")
            except Exception as exc:
                self._revoke_failed = exc
        self._paused -= set(partitions)
        for tp in partitions:
            self._lag.pop(tp, None)

    def _refresh_end_offsets(self, force: bool = False, only=None) -> None:
        """Ask the ends of the assigned partitions (every second, or now with ``force``), or
        now of ``only`` those."""
        now = time.monotonic()
        if only is None and not force and now - self._ends_at < _END_OFFSETS_EVERY_S:
            return
        partitions = sorted(self.consumer.assignment() if only is None else only)
        if partitions:
            self.end_offsets.update(self.consumer.end_offsets(partitions))
        if only is None:
            self._ends_at = now

    def _documents_first(self) -> None:
        assigned = self.consumer.assignment()
        if not assigned:
            return
        if self._paused:
            # Whether the documents are caught up yet, asked at every poll: only their ends
            # (which every fetch brings along), not the paused events partitions'.
            self._refresh_end_offsets(only=[tp for tp in assigned if tp.topic == self.docs_topic])
        else:
            self._refresh_end_offsets()
        behind = any(
            tp.topic == self.docs_topic
            and self.end_offsets.get(tp, 0) > self.next_offsets.get(tp, 0)
            for tp in assigned
        )
        events = {tp for tp in assigned if tp.topic != self.docs_topic}
        if behind and events - self._paused:
            self.consumer.pause(events - self._paused)
            self._paused |= events
        elif not behind and self._paused:
            self.consumer.resume(self._paused & assigned)
            self._paused.clear()
