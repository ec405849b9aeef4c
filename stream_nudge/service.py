"""``stream-nudge run``: the engine between Kafka topics, restartable, observable.

``processing.guarantee: exactly_once`` (the default): every commit (each ``commit_interval_ms``
or ``commit_records``, at shutdown and before partitions are revoked) is one Kafka transaction
with the updates, the dead letters, the changelog records of the state's changes and the input
offsets (:mod:`stream_nudge.kafka.committer`). The state lives in the changelog topics: at start
and after any failure the transactional producer fences a previous member with the same id,
the engine is rebuilt from the changelog and the input is read from the group's committed
offsets. The generation counter is part of the state.

``at_least_once``: the loop: poll a batch -> engine -> send the updates; every ``checkpoint.every_seconds``, and at
shutdown and before partitions are revoked: flush the producer (every update of the processed
batches is acknowledged), then write the checkpoint (engine state + next offset of every input
partition, atomically), then commit the offsets to the group (informational). On start: restore the
checkpoint and seek to its offsets, so no event is counted twice and none is lost.

Updates sent after the last checkpoint may be sent again after a crash (the batches after it are
processed again); they are upserts keyed by document id, and generations continue above the highest
one found in the updates topic, so a document's generation never goes backwards.

SIGTERM and SIGINT only set a flag: the current batch finishes, a final checkpoint is written, and
the process exits 0. A broker that is down (at start or later) is retried with exponential backoff;
if delivery of updates fails, the engine goes back to the last checkpoint and reprocesses from its
offsets once the broker is back, so nothing is lost.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable

from stream_nudge.checkpoint import CheckpointError, CheckpointStore, StateDirectoryError
from stream_nudge.config import Config
from stream_nudge.engine import Changes, Engine, restore, snapshot
from stream_nudge.engine.changelog import ChangelogError, ChangelogWriter
from stream_nudge.faults import crash_point
from stream_nudge.kafka import (
    ClientError,
    KafkaSink,
    KafkaSource,
    SinkError,
    TransactionalCommitter,
    committed_offsets,
    ensure_changelog,
    ensure_topics,
    is_configuration_error,
    last_generation,
    read_changelog,
)
from stream_nudge.kafka.cache import CacheRefresher, LocalCache
from stream_nudge.kafka.changelog import CHANGELOG_CONFIG, Restored
from stream_nudge.kafka.common import make_producer
from stream_nudge.loop import run
from stream_nudge.observability import Metrics
from stream_nudge.sinks import Sink

__all__ = ["Service"]

log = logging.getLogger(__name__)

# A local cache older than half the time the changelog keeps tombstones is not used: a deletion
# whose tombstone compaction removed would be missed.
CACHE_MAX_AGE_S = int(CHANGELOG_CONFIG["delete.retention.ms"]) / 1000.0 / 2


class _Restart(Exception):
    """Go back to the last checkpoint and reconnect."""


class _MeteredSink:
    """The Kafka sink, counting what goes through it in the metrics."""

    def __init__(self, sink: Sink, metrics: Metrics):
        self.sink, self.metrics = sink, metrics

    def write(self, changes: Changes) -> None:
        self.sink.write(changes)
        self.metrics.updates.inc(changes.message_count)
        for letter in changes.dead_letters:
            self.metrics.dead_letters.labels(letter.reason).inc()
        for report in changes.selections:
            self.metrics.reselection_seconds.observe(report.seconds)
            self.metrics.score.labels("before").set(report.value_before)
            self.metrics.score.labels("after").set(report.value_after)


class Service:
    def __init__(self, config: Config):
        self.config = config
        c = config.checkpoint
        self.store = CheckpointStore(
            c.directory, keep_previous=c.keep_previous, fallback=c.fallback_to_previous
        )
        self.metrics = Metrics()
        self.stop_requested = False
        self.engine: Engine | None = None
        self.source: KafkaSource | None = None
        self.sink: KafkaSink | None = None
        self.offsets: dict = {}
        self.last_checkpoint = time.monotonic()
        self.metrics_port: int | None = None
        self.exactly_once = config.processing.guarantee == "exactly_once"
        self.committer: TransactionalCommitter | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def request_stop(self, *_args) -> None:
        if not self.stop_requested:
            log.info("stop requested: finishing the batch, then a final checkpoint")
        self.stop_requested = True

    def run(self) -> int:
        """Run until stopped; 0 on a clean stop, 1 if the state cannot be restored or saved."""
        # First of all: from here on a SIGTERM ends the service cleanly.
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        # SIGUSR1 prints every thread's stack to stderr: what a service that looks stuck is
        # doing (where stderr is a file; not under a test's captured output).
        with contextlib.suppress(AttributeError, OSError, ValueError):
            faulthandler.register(signal.SIGUSR1, all_threads=True)
        try:
            self.store.claim()
        except StateDirectoryError as exc:
            log.error("cannot start: %s", exc)
            return 1
        try:
            return self._run()
        finally:
            self.store.release()

    def _run(self) -> int:
        m = self.config.metrics
        if m.port:
            self.metrics_port = self.metrics.serve(m.host, m.port)
            log.info("metrics and /healthz on %s:%d", m.host, self.metrics_port)
        try:
            self._load_state()
        except (CheckpointError, ValueError) as exc:
            log.error("cannot start: %s", exc)
            self.metrics.close()
            return 1
        backoff = 0.5
        saved = True
        finished = False  # the loop returned: the final commit or checkpoint was made
        while not self.stop_requested:
            try:
                self._connect()
                backoff = 0.5
                self._loop()  # returns once stopped, after the final checkpoint
                finished = True
            except (StateDirectoryError, ChangelogError, CheckpointError) as exc:
                # Not Kafka trouble: going back to the last checkpoint and reading again would
                # only fail the same way, forever, while looking alive. Stop, unhealthy, loudly.
                # (A changelog record that does not decode: the member refuses to run on state
                # it cannot read rather than start empty.)
                log.error("stopping: %s", exc)
                self.metrics.fail(str(exc))
                self._disconnect()
                self.metrics.close()
                return 1
            except (ClientError, SinkError, OSError, TimeoutError, _Restart) as exc:
                if isinstance(exc, ClientError) and exc.fenced:
                    # Another member took our transactional id: we are the zombie. Whatever
                    # this one had not committed is aborted; it must not write again.
                    log.error(
                        "stopping: fenced by a newer member with our transactional id: %s", exc
                    )
                    self.metrics.fail(str(exc))
                    self._disconnect()
                    self.metrics.close()
                    return 1
                if is_configuration_error(exc):
                    # A setting the client refuses: the same refusal at every retry.
                    log.error("stopping: the Kafka client refuses the configuration: %s", exc)
                    self.metrics.fail(str(exc))
                    self._disconnect()
                    self.metrics.close()
                    return 2
                if self.stop_requested:
                    if self.exactly_once:
                        # Nothing is lost: the open transaction is aborted, and what it held is
                        # read again from the committed offsets by the next member.
                        log.warning(
                            "the final commit failed (%s): the work since the last commit will "
                            "be done again from the committed offsets",
                            exc,
                        )
                        break
                    log.error("final checkpoint failed (%s); the previous one stands", exc)
                    saved = False
                    break
                log.warning(
                    "Kafka trouble (%s: %s); retrying in %.1f s",
                    exc.__class__.__name__,
                    exc,
                    backoff,
                )
                self._disconnect()
                self._sleep(backoff)
                backoff = min(2 * backoff, self.config.service.retry_backoff_max_seconds)
                # Whatever was sent since the last checkpoint may not have arrived: start again
                # from the checkpoint (its offsets), which reprocesses and resends it.
                try:
                    self._load_state()
                except (CheckpointError, ValueError) as err:
                    log.error("cannot restore the checkpoint: %s", err)
                    return 1
        self._disconnect(finished)
        self.metrics.close()
        log.info("stopped")
        return 0 if saved else 1

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop_requested and time.monotonic() < deadline:
            self.metrics.tick()
            time.sleep(min(0.2, deadline - time.monotonic()))

    def _load_state(self) -> None:
        if self.exactly_once:
            return  # rebuilt from the changelog at every connection, once zombies are fenced
        checkpoint = self.store.load()
        if checkpoint is None:
            self.engine = Engine(self.config)
            self.offsets = {}
            log.info(
                "no checkpoint in %s: starting from the beginning of the input",
                self.store.directory,
            )
        else:
            self.engine = restore(self.config, checkpoint.arrays, checkpoint.meta)
            self.offsets = checkpoint.offsets
            log.info(
                "restored checkpoint %s: %d events, %d documents, gamma %.6g",
                checkpoint.path,
                self.engine.events,
                len(self.engine.docs) if self.engine.docs else 0,
                self.engine.gamma,
            )
        self.metrics.last_checkpoint = time.time()

    def _connect(self) -> None:
        ensure_topics(self.config)
        if self.exactly_once:
            self._connect_transactional()
            return
        published = last_generation(self.config)
        if published > self.engine.generation:
            self.engine.generation = published
        self.sink = KafkaSink(self.config)
        self.source = KafkaSource(self.config, self.offsets, on_revoke=self.checkpoint)
        log.info("connected to %s", self.config.kafka.bootstrap_servers)

    def _connect_transactional(self) -> None:
        """Fence a previous member (the producer's transactions start), rebuild the engine from
        the local cache and the changelog, and read the input from the group's committed
        offsets."""
        c = self.config
        topics = ensure_changelog(c)
        txn = c.processing.transactional_id or f"{c.kafka.group_id}-txn"
        producer = make_producer(c, transactional_id=txn)
        p = c.processing
        cache = None
        if p.cache_interval_ms > 0:
            cache = LocalCache(c.checkpoint.directory, topics, max_age_s=CACHE_MAX_AGE_S)
        try:
            restored, self.offsets = restore_transactional(c, self.store, cache, self._restoring)
        except BaseException:
            producer.close()
            raise
        self.engine = e = restored.engine
        refresher = None
        if cache is not None:
            refresher = CacheRefresher(cache, p.cache_interval_ms / 1000.0, self._cache_written)
            # What the cache lacks (all of it, after a wiped disk), written in the background.
            refresher.add(restored.tail_records())
            refresher.refresh(restored.ends)
        self.sink = KafkaSink(c, producer)
        self.source = KafkaSource(c, self.offsets, on_revoke=self.commit)
        self.committer = TransactionalCommitter(
            producer,
            self.source,
            ChangelogWriter(e, fresh=restored.empty),
            topics,
            p.commit_interval_ms / 1000.0,
            p.commit_records,
            p.caught_up_commit_ms / 1000.0,
            on_commit=self._committed,
            cache=refresher,
            changelog_partitions=list(restored.ends),
        )
        log.info(
            "connected to %s (exactly once, transactional id %s)", c.kafka.bootstrap_servers, txn
        )

    def _restoring(self, read: int, left: int) -> None:
        self.metrics.tick()  # a long restore is work, not a hang
        self.metrics.restore_records.set(read)
        self.metrics.changelog_lag.set(left)

    def _cache_written(self, seconds: float, _records: int) -> None:
        self.metrics.cache_seconds.observe(seconds)

    def _committed(self, seconds: float, records: int) -> None:
        self.metrics.commit_seconds.observe(seconds)
        self.metrics.commit_records.observe(records)
        self.metrics.last_checkpoint = time.time()

    def _disconnect(self, finished: bool = False) -> None:
        """Close the clients; wait for the local cache's write under way (after the final commit
        of a clean stop (``finished``), with all that was committed: the next start reads no
        tail)."""
        if self.committer is not None:
            try:
                self.committer.close(refresh=finished)
            except Exception as exc:  # the cache is only a cache: the changelog has it all
                log.warning("the local cache was not refreshed at the stop: %s", exc)
        for edge in (self.source, self.sink):
            if edge is not None:
                try:
                    edge.close()
                except Exception as exc:  # closing a broken client must not stop the restart
                    log.debug("closing %s: %s", edge.__class__.__name__, exc)
        self.source = self.sink = self.committer = None

    # --- the loop -------------------------------------------------------------------------------

    def _loop(self) -> None:
        """The run loop (stream_nudge.loop) between the Kafka source and sink, committed by
        checkpoints; it returns once a stop is requested, after the final checkpoint."""
        c = self.config
        run(
            self.engine,
            self.source,
            _MeteredSink(self.sink, self.metrics),
            c.kafka.max_poll_records,
            committer=self,
            stop=lambda: self.stop_requested,
            idle_select_seconds=c.service.idle_select_seconds,
            on_batch=self._observe,
        )

    # The committer of the run loop: a checkpoint every checkpoint.every_seconds.

    def due(self, now: float) -> bool:
        if self.committer is not None:
            return self.committer.due(now)
        return now - self.last_checkpoint >= self.config.checkpoint.every_seconds

    def commit(self) -> None:
        if self.committer is not None:
            self.committer.commit()
        else:
            self.checkpoint()

    def _observe(self, batch: list) -> None:
        self.metrics.tick()
        if self.committer is not None:
            self.committer.count(len(batch), len(batch) < self.config.kafka.max_poll_records)
        for topic, n in Counter(record.topic for record in batch).items():
            self.metrics.events.labels(topic).inc(n)
        e = self.engine
        self.metrics.gamma.set(e.gamma)
        self.metrics.pending.set(e.pending_count)
        if e.docs is not None:
            self.metrics.documents.set(len(e.docs))
        if self.source is not None:
            for tp, lag in self.source.lag().items():
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)

    def checkpoint(self) -> None:
        """Flush the producer, write state + offsets atomically, then commit offsets to the group."""
        started = time.monotonic()
        self.sink.flush()
        offsets = self.source.position()
        arrays, meta = snapshot(self.engine)
        self.store.save(arrays, meta, offsets)
        self.offsets = offsets
        self.source.commit()
        self.last_checkpoint = time.monotonic()
        self.metrics.last_checkpoint = time.time()
        self.metrics.checkpoint_seconds.observe(self.last_checkpoint - started)
        if self.engine.docs is not None:
            self.metrics.nudged.set(len(self.engine.docs.nudged_rows()))
        log.debug("checkpoint written (%d events)", self.engine.events)


def restore_transactional(
    config: Config,
    store: CheckpointStore,
    cache: LocalCache | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Restored, dict]:
    """Exactly once's engine and input offsets: the changelog's (read after the local ``cache``,
    if any) and the group's committed ones.

    An empty changelog beside a checkpoint of at_least_once (in the same state directory) is
    that checkpoint, migrated: the first commit writes all of it into the changelog, with its
    offsets. An empty changelog while the group has committed offsets is refused (the state
    that goes with them is gone).
    """
    restored = read_changelog(config, cache, progress)
    crash_point("restore")
    offsets = committed_offsets(config)
    engine = restored.engine
    if not restored.empty:
        log.info(
            "restored from the changelog: %d records from the local cache, %d from the topics; "
            "%d events, %d documents, gamma %.6g, generation %d",
            restored.cached,
            restored.read,
            engine.events,
            len(engine.docs) if engine.docs else 0,
            engine.gamma,
            engine.generation,
        )
        return restored, offsets
    checkpoint = store.load()
    if checkpoint is not None:
        engine = restore(config, checkpoint.arrays, checkpoint.meta)
        # As at_least_once did: above every generation it may have published after it.
        engine.generation = max(engine.generation, last_generation(config))
        log.info(
            "the changelog is empty: migrating the at_least_once checkpoint %s (%d events) into "
            "it at the first commit; the file is not read again once that commit is made",
            checkpoint.path,
            engine.events,
        )
        return restored._replace(engine=engine), checkpoint.offsets
    if offsets:
        raise ChangelogError(
            f"the changelog topics are empty, but the group {config.kafka.group_id!r} has "
            f"committed input offsets {offsets}: the state they go with is gone (changelog "
            "topics deleted or renamed?). Refusing to start on empty state. To rebuild it from "
            "the input, reset the group's offsets to the earliest (kafka-consumer-groups.sh "
            "--group <group> --reset-offsets --to-earliest --all-topics --execute)."
        )
    log.info("restored from the changelog: it is empty, starting from the beginning")
    return restored, offsets
