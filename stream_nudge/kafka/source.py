"""The Kafka source: the docs and events topics as one consumer group, offsets from the checkpoint.

Documents go first: while any docs partition has records not yet consumed, the events partitions
are paused, so clicks meet their documents (as in a replay, which reads all documents first).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from stream_nudge.config import Config
from stream_nudge.kafka.common import client_settings
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
        self.end_offsets: dict[TopicPartition, int] = {}
        self._ends_at = 0.0
        self._paused: set[TopicPartition] = set()
        self.consumer = KafkaConsumer(
            **client_settings(config),
            group_id=k.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=k.max_poll_records,
            fetch_max_bytes=k.fetch_max_bytes,
            max_partition_fetch_bytes=k.max_partition_fetch_bytes,
        )
        self.consumer.subscribe(list(self.kinds), listener=_Listener(self))

    # --- the Source interface ---------------------------------------------------------------

    def next_batch(self, max_records: int) -> list[Record]:
        self._documents_first()
        polled = self.consumer.poll(
            timeout_ms=self.config.kafka.poll_timeout_ms, max_records=max_records
        )
        docs, events = [], []
        for tp, messages in polled.items():
            kind = self.kinds.get(tp.topic)
            target = docs if kind == "docs" else events
            for m in messages:
                ts = m.timestamp / 1000.0 if m.timestamp is not None and m.timestamp >= 0 else None
                target.append(
                    Record(
                        kind,
                        m.value,
                        position=(tp.topic, tp.partition, m.offset),
                        timestamp=ts,
                        key=m.key,
                    )
                )
            if messages:
                self.next_offsets[tp] = messages[-1].offset + 1
        return docs + events

    def position(self) -> dict:
        out: dict[str, dict[str, int]] = {}
        for tp, offset in self.next_offsets.items():
            out.setdefault(tp.topic, {})[str(tp.partition)] = offset
        return out

    def close(self) -> None:
        self.consumer.close(autocommit=False)

    # --- lag, ordering, commits --------------------------------------------------------------

    def refresh_end_offsets(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._ends_at < _END_OFFSETS_EVERY_S:
            return
        assigned = list(self.consumer.assignment())
        if assigned:
            self.end_offsets.update(self.consumer.end_offsets(assigned))
        self._ends_at = now

    def lag(self) -> dict[TopicPartition, int]:
        out = {}
        for tp in self.consumer.assignment():
            end = self.end_offsets.get(tp)
            if end is not None:
                out[tp] = max(0, end - self.next_offsets.get(tp, 0))
        return out

    def caught_up(self) -> bool:
        self.refresh_end_offsets(force=True)
        lag = self.lag()
        return bool(lag) and len(lag) == len(self.consumer.assignment()) and not any(lag.values())

    def _documents_first(self) -> None:
        assigned = self.consumer.assignment()
        if not assigned:
            return
        self.refresh_end_offsets(force=bool(self._paused))
        docs_topic = self.config.kafka.topics.docs
        behind = any(
            tp.topic == docs_topic and self.end_offsets.get(tp, 0) > self.next_offsets.get(tp, 0)
            for tp in assigned
        )
        events = {tp for tp in assigned if tp.topic != docs_topic}
        if behind and events - self._paused:
            self.consumer.pause(*events)
            self._paused |= events
        elif not behind and self._paused:
            self.consumer.resume(*self._paused)
            self._paused.clear()

    def commit(self) -> None:
        """Tell the group where we are (for lag tools); the checkpoint stays the source of truth."""
        offsets = {
            tp: OffsetAndMetadata(o, "", -1)
            for tp, o in self.next_offsets.items()
            if tp in self.consumer.assignment()
        }
        if offsets:
            try:
                self.consumer.commit(offsets)
            except Exception as exc:  # informational only: a failed commit loses nothing
                log.warning("could not commit offsets to the group: %s", exc)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, source: KafkaSource):
        self.source = source

    def on_partitions_revoked(self, revoked):
        if revoked and self.source.on_revoke is not None:
            # Checkpoint before giving partitions up, so that their next owner (or our next
            # assignment) starts exactly after what the state reflects.
            self.source.on_revoke()
            log.info("partitions revoked: checkpoint written before giving them up")
        self.source._paused -= set(revoked)

    def on_partitions_assigned(self, assigned):
        consumer = self.source.consumer
        for tp in assigned:
            offset = self.source.next_offsets.get(tp)
            if offset is None:
                consumer.seek_to_beginning(tp)
                self.source.next_offsets[tp] = 0
            else:
                consumer.seek(tp, offset)
        # Events wait until the documents are caught up (decided at the next batch): paused here,
        # before the first fetch, so that no event can overtake the documents at start.
        events = [tp for tp in assigned if self.source.kinds.get(tp.topic) == "events"]
        if events:
            consumer.pause(*events)
            self.source._paused |= set(events)
        log.info("assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(assigned)))
