"""Exactly-once commits: each one a Kafka transaction.

Between two commits the sink's updates and dead letters go into the producer's open transaction.
A commit then adds the changelog records of what the state changed since the last commit and the
input offsets reached (with the consumer group's metadata, which fences a member the group has
replaced), and commits the transaction: all of it becomes visible to ``read_committed`` readers at
once, or none of it does. A new transaction begins at once.

After a failure nothing of the open transaction counts: the service aborts it (or a restarted
member's producer does, fencing the old one), rebuilds the engine from the changelog and reads the
input again from the committed offsets. So every input record is reflected once in the state and
in the updates a ``read_committed`` reader sees, whatever the moment of a crash.

The records of each commit, once committed, also go to the local cache's refresher
(:mod:`stream_nudge.kafka.cache`), which writes them to disk in a thread of its own every
``processing.cache_interval_ms``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from stream_nudge.engine.changelog import ChangelogWriter
from stream_nudge.faults import crash_point
from stream_nudge.kafka.cache import CacheRefresher
from stream_nudge.kafka.changelog import write_changelog
from stream_nudge.kafka.client import ClientError, Producer, TopicPartition

__all__ = ["CommitSchedule", "TransactionalCommitter"]

log = logging.getLogger(__name__)


class CommitSchedule:
    """When a commit is due: ``max_records`` input records since the last one, or
    ``interval_s`` since it (also with no input: an idle re-selection's updates must not wait
    for the next record to become visible), or, once the input is caught up, ``caught_up_s``
    since it with something to commit. Under load that makes fewer, bigger transactions; when
    the service keeps up, updates become visible sooner, as nothing is gained by waiting."""

    def __init__(self, interval_s: float, max_records: int, caught_up_s: float = 0.0):
        self.interval_s, self.max_records, self.caught_up_s = interval_s, max_records, caught_up_s
        self.last = time.monotonic()
        self.uncommitted = 0  # input records since the last commit
        self.caught_up = False  # the last batch found the input caught up

    def count(self, records: int, caught_up: bool = False) -> None:
        """A batch of ``records`` was processed; ``caught_up``: it was all the input there was
        (fewer records than a poll may bring)."""
        self.uncommitted += records
        self.caught_up = caught_up

    def due(self, now: float) -> bool:
        since = now - self.last
        if self.uncommitted >= self.max_records or since >= self.interval_s:
            return True
        return self.caught_up and self.uncommitted > 0 and 0 < self.caught_up_s <= since

    def committed(self, now: float) -> None:
        self.last, self.uncommitted = now, 0


class TransactionalCommitter:
    """The run loop's committer for ``processing.guarantee: exactly_once``."""

    def __init__(
        self,
        producer: Producer,
        source,
        writer: ChangelogWriter,
        topics: dict[str, str],
        interval_s: float,
        max_records: int,
        caught_up_s: float = 0.0,
        on_commit: Callable[[float, int], None] | None = None,
        cache: CacheRefresher | None = None,
        changelog_partitions: list[TopicPartition] = (),
    ):
        self.producer, self.source, self.writer, self.topics = producer, source, writer, topics
        self.cache, self.changelog_partitions = cache, list(changelog_partitions)
        self.schedule = CommitSchedule(interval_s, max_records, caught_up_s)
        self.on_commit = on_commit
        self.commits = 0
        self.producer.begin()

    def count(self, records: int, caught_up: bool = False) -> None:
        self.schedule.count(records, caught_up)

    def due(self, now: float) -> bool:
        return self.schedule.due(now)

    def commit(self) -> None:
        """Changelog records and input offsets into the open transaction; commit it; begin the
        next one."""
        started = time.monotonic()
        crash_point("commit:changelog")
        records = self.writer.records()
        write_changelog(self.producer, self.topics, records)
        # The offsets of the partitions this member holds now: committing others, or any before
        # the member has joined the group, is refused (an illegal generation), and a partition
        # given up was committed by the revocation's commit.
        assigned = self.source.assignment()
        offsets = {
            tp: offset
            for topic, parts in self.source.position().items()
            for partition, offset in parts.items()
            if (tp := TopicPartition(topic, int(partition))) in assigned
        }
        crash_point("commit:offsets")
        self.producer.commit(offsets, self.source.group_metadata())
        crash_point("commit:committed")
        self.producer.begin()
        done = time.monotonic()
        self.schedule.committed(done)
        self.commits += 1
        if self.cache is not None:
            self.cache.add(records)  # committed: the local cache may have them
            if self.cache.due(done):
                self.refresh_cache()
        if self.on_commit is not None:
            self.on_commit(done - started, len(records))
        log.debug("committed: %d changelog records, offsets %s", len(records), offsets)

    def refresh_cache(self) -> None:
        """Hand what was committed since the last refresh to the local cache's thread, with the
        changelog's end offsets read now: right after a commit, before the next one sends any
        changelog record, so that every later record lies at or above them."""
        if self.cache is None or not self.changelog_partitions:
            return
        ends = self.source.consumer.end_offsets(self.changelog_partitions)
        self.cache.refresh(ends)

    def close(self, refresh: bool) -> None:
        """Wait for the local cache's write under way; first hand it the last commits' records
        when ``refresh`` (after the final commit of a clean stop)."""
        if self.cache is None:
            return
        if refresh:
            self.cache.close()  # the write under way, then this last one
            try:
                self.refresh_cache()
            except ClientError as exc:
                log.warning("could not refresh the local cache at the stop: %s", exc)
        self.cache.close()
