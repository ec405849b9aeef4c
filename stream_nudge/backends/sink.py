"""``stream-nudge sink``: the updates topic (or an updates JSONL file) into a search backend.

One long-lived process per backend. It reads the updates topic as a ``read_committed`` consumer
outside any group, from the offsets the backend holds (:meth:`Backend.offsets`): the backend is
the one source of truth for where to resume, because it stores them with the rows, in the same
transaction (PostgreSQL) or after them with a rule that makes a batch applied twice the same as
once (LanceDB). So a crash at any point neither loses a row nor writes one twice in effect.

A batch is written after ``sink.batch_records`` records or ``sink.batch_ms``, whichever comes
first, and at once when the input is caught up. Records that are not updates go to the sink's
dead-letter topic (or file) with their reason, before the batch that passed them is written
(so none is lost; after a crash one may be sent again). A backend or broker that goes away is
retried with exponential backoff, resuming from the backend's offsets; what cannot work (a
missing table, another dimension) stops the sink with a message saying what to do.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import time
from pathlib import Path

from stream_nudge.backends import Backend, BackendError, BackendUnavailable, Offsets, open_backend
from stream_nudge.backends.updates import Net, decode_update
from stream_nudge.config import Config
from stream_nudge.faults import crash_point
from stream_nudge.messages import DeadLetter, Record, encode_dead_letter
from stream_nudge.observability import SinkMetrics

__all__ = ["SinkService"]

log = logging.getLogger(__name__)

#: A progress line in the log this often.
_PROGRESS_EVERY_S = 10.0
#: End offsets (for the lag metric) are asked of the broker this often.
_LAG_EVERY_S = 2.0
#: The updates topic's partition count is checked this often (partitions added are read too).
_PARTITIONS_EVERY_S = 10.0


class _NotYet(Exception):
    """Something the sink waits for (the updates topic before `run` created it)."""


class KafkaUpdates:
    """The updates topic's partitions, read_committed, from the backend's offsets."""

    def __init__(self, config: Config, offsets: Offsets):
        from stream_nudge.kafka.client import TopicPartition
        from stream_nudge.kafka.common import make_admin, make_consumer

        k = config.kafka
        self.topic = k.topics.updates
        self.max_records = k.max_poll_records
        self.poll_timeout_s = k.poll_timeout_ms / 1000.0
        self.admin = make_admin(config)
        partitions = self.admin.topics().get(self.topic)
        if not partitions:
            self.admin.close()
            raise _NotYet(f"the updates topic {self.topic} does not exist yet")
        self._partitions_at = time.monotonic()
        self.next: dict[tuple[str, int], int] = {
            (self.topic, p): offsets.get((self.topic, p), 0) for p in range(partitions)
        }
        self.consumer = make_consumer(config, group_id=f"{k.group_id}-sink")
        self.consumer.assign({TopicPartition(t, p): o for (t, p), o in self.next.items()})
        self._caught_up = False
        self._lag_at = 0.0
        self.lag: dict[tuple[str, int], int] = {}

    def next_batch(self, max_records: int) -> list[Record]:
        messages = self.consumer.poll(max_records, self.poll_timeout_s)
        self._caught_up = len(messages) < max_records
        out = []
        for m in messages:
            out.append(
                Record("updates", m.value, (m.topic, m.partition, m.offset), None, m.key, m.headers)
            )
            self.next[(m.topic, m.partition)] = m.offset + 1
        return out

    def advanced(self, record: Record) -> tuple[tuple[str, int], int]:
        topic, partition, offset = record.position
        return (topic, partition), offset + 1

    def caught_up(self) -> bool:
        return self._caught_up

    def refresh_lag(self) -> dict[tuple[str, int], int]:
        from stream_nudge.kafka.client import TopicPartition

        now = time.monotonic()
        if now - self._partitions_at >= _PARTITIONS_EVERY_S:
            self._partitions_at = now
            partitions = self.admin.topics().get(self.topic, 0)
            if partitions > len(self.next):
                # Read the new ones too: start again from the backend's offsets (the batch in
                # hand is read again; nothing is applied twice in effect).
                raise _NotYet(
                    f"the updates topic {self.topic} has {partitions} partitions now, "
                    f"{len(self.next)} before: reading all of them"
                )
        if now - self._lag_at >= _LAG_EVERY_S:
            self._lag_at = now
            ends = self.consumer.end_offsets([TopicPartition(*tp) for tp in self.next])
            self.lag = {tuple(tp): max(0, end - self.next[tuple(tp)]) for tp, end in ends.items()}
        return self.lag

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.consumer.close()
        with contextlib.suppress(Exception):
            self.admin.close()


class FileUpdates:
    """An updates JSONL file (what ``replay --out`` writes), from the line the backend holds."""

    def __init__(self, path: str, offsets: Offsets, max_line_bytes: int):
        from stream_nudge.sources import JsonlSource

        self.path = Path(path)
        self.source_key = ("file:" + str(self.path.resolve()), 0)
        # The next line to apply (lines are numbered from 1).
        self.start = offsets.get(self.source_key, 1)
        self._source = JsonlSource(self.path, None, max_line_bytes=max_line_bytes)
        self.lag: dict[tuple[str, int], int] = {}

    def next_batch(self, max_records: int) -> list[Record] | None:
        while True:
            batch = self._source.next_batch(max_records)
            if batch is None:
                return None
            batch = [r for r in batch if r.position["line"] >= self.start]
            if batch:
                return batch

    def advanced(self, record: Record) -> tuple[tuple[str, int], int]:
        return self.source_key, record.position["line"] + 1

    def caught_up(self) -> bool:
        return False  # until its end: batches are full, the last one is written at the end

    def refresh_lag(self) -> dict[tuple[str, int], int]:
        return {}

    def progress(self) -> str:
        total = self._source.bytes_total or 1
        return f"{100.0 * self._source.bytes_read / total:.0f}% of {self.path.name}"

    def close(self) -> None:
        self._source.close()


class _Batch:
    """What the next backend transaction holds."""

    def __init__(self):
        self.net = Net()
        self.offsets: Offsets = {}
        self.records = 0
        self.dead: list[DeadLetter] = []
        self.started = time.monotonic()


class SinkService:
    def __init__(
        self,
        config: Config,
        source_file: str | None = None,
        dead_letter_file: str | None = None,
    ):
        self.config = config
        self.sink = config.sink
        self.source_file = source_file
        self.dead_letter_file = dead_letter_file
        self.metrics = SinkMetrics()
        self.stop_requested = False
        self.backend: Backend | None = None
        self.source: KafkaUpdates | FileUpdates | None = None
        self._producer = None
        self._dead_out = None
        self.dimension: int | None = config.dimension
        self.counts = {"records": 0, "upserts": 0, "deletes": 0, "dead_letters": 0, "batches": 0}
        self._progress_at = time.monotonic()

    def request_stop(self, *_args) -> None:
        if not self.stop_requested:
            log.info("stop requested: writing the batch in hand, then stopping")
        self.stop_requested = True

    def run(self) -> int:
        """Run until stopped (or, from a file, until its end); 0 on a clean stop, 1 when the
        backend cannot work as configured, 2 when the Kafka client refuses its settings."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        with contextlib.suppress(AttributeError, OSError, ValueError):
            faulthandler.register(signal.SIGUSR1, all_threads=True)
        if not self.sink.to:
            log.error("cannot start: no backend; set sink.to or --to")
            return 1
        if self.sink.metrics_port:
            host = self.config.metrics.host
            try:
                port = self.metrics.serve(host, self.sink.metrics_port)
            except OSError as exc:
                log.error(
                    "cannot start: metrics on %s:%d: %s (set sink.metrics_port, 0: off)",
                    host,
                    self.sink.metrics_port,
                    exc,
                )
                return 1
            log.info("metrics and /healthz on %s:%d", host, port)
        try:
            return self._run()
        finally:
            self._disconnect()
            self._close_outputs()
            self.metrics.close()

    def _run(self) -> int:
        from stream_nudge.kafka.common import ClientError, is_configuration_error

        backoff = 0.5
        max_backoff = self.config.service.retry_backoff_max_seconds
        while not self.stop_requested:
            try:
                self._connect()
                backoff = 0.5
                self._loop()
                break
            except BackendUnavailable as exc:
                self._retrying(exc, backoff)
            except BackendError as exc:
                log.error("stopping: %s", exc)
                self.metrics.fail(str(exc))
                return 1
            except (ClientError, _NotYet, OSError) as exc:
                if is_configuration_error(exc):
                    log.error("stopping: the Kafka client refuses the configuration: %s", exc)
                    self.metrics.fail(str(exc))
                    return 2
                if isinstance(exc, OSError) and self.source_file is not None:
                    log.error("stopping: %s", exc)
                    return 1
                self._retrying(exc, backoff)
            else:
                continue
            self._disconnect()
            self._sleep(backoff)
            backoff = min(2 * backoff, max_backoff)
        c = self.counts
        log.info(
            "stopped: %d records read, %d rows written, %d deleted, %d dead letters, %d batches",
            c["records"],
            c["upserts"],
            c["deletes"],
            c["dead_letters"],
            c["batches"],
        )
        return 0

    def _retrying(self, exc: Exception, backoff: float) -> None:
        self.metrics.retries.inc()
        log.warning(
            "%s: %s; retrying in %.1f s from the backend's offsets",
            exc.__class__.__name__,
            exc,
            backoff,
        )

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop_requested and time.monotonic() < deadline:
            self.metrics.tick()
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    # --- connection ---------------------------------------------------------------------------

    def _connect(self) -> None:
        s = self.sink
        self.backend = open_backend(
            s.to,
            s.table,
            create=s.create,
            dimension=self.dimension,
            index=s.index,
            index_min_rows=s.lancedb_index_min_rows,
            optimize_interval_s=s.lancedb_optimize_interval_s,
        )
        self.backend.open()
        self.dimension = self.backend.dimension or self.dimension
        offsets = self.backend.offsets()
        if self.source_file is not None:
            self.source = FileUpdates(
                self.source_file, offsets, self.config.limits.max_message_bytes
            )
            log.info(
                "writing %s into %s, from line %d",
                self.source_file,
                self.backend.name,
                self.source.start,
            )
        else:
            self.source = KafkaUpdates(self.config, offsets)
            log.info(
                "writing topic %s into %s, from offsets %s",
                self.source.topic,
                self.backend.name,
                {p: o for (_, p), o in sorted(self.source.next.items())},
            )

    def _disconnect(self) -> None:
        if self.source is not None:
            self.source.close()
            self.source = None
        if self.backend is not None:
            with contextlib.suppress(Exception):
                self.backend.close()
            self.backend = None

    # --- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        source, batch_records = self.source, self.sink.batch_records
        batch_s = self.sink.batch_ms / 1000.0
        read = batch_records
        if isinstance(source, KafkaUpdates):
            read = min(batch_records, self.config.kafka.max_poll_records)
        batch = _Batch()
        while not self.stop_requested:
            records = source.next_batch(read)
            if records is None:  # the end of a file
                break
            if records and not batch.records:
                batch.started = time.monotonic()
            for record in records:
                self._take(batch, record)
            caught_up = source.caught_up()
            if batch.records and (
                batch.records >= batch_records
                or caught_up
                or time.monotonic() - batch.started >= batch_s
            ):
                self._write(batch)
                batch = _Batch()
            if caught_up:
                self.backend.caught_up()
            self.metrics.tick()
            for (topic, partition), lag in source.refresh_lag().items():
                self.metrics.lag.labels(topic, str(partition)).set(lag)
            self._progress()
        if batch.records:
            self._write(batch)
        if not self.stop_requested:  # the end of a file
            self.backend.caught_up()

    def _take(self, batch: _Batch, record: Record) -> None:
        got = decode_update(record, self.dimension)
        if isinstance(got, DeadLetter):
            batch.dead.append(got)
        else:
            if self.dimension is None and got.vector is not None:
                self.dimension = len(got.vector)
            batch.net.add(got)
        where, next_offset = self.source.advanced(record)
        batch.offsets[where] = next_offset
        batch.records += 1

    def _write(self, batch: _Batch) -> None:
        crash_point("sink:dead_letters")
        if batch.dead:
            self._dead_letters(batch.dead)
        crash_point("sink:write")
        started = time.monotonic()
        self.backend.write(batch.net, batch.offsets)
        seconds = time.monotonic() - started
        crash_point("sink:written")
        upserts, deletes = len(batch.net.upserts()), len(batch.net.deletes())
        m, c = self.metrics, self.counts
        m.batch_seconds.observe(seconds)
        m.batch_records.observe(batch.records)
        m.records.labels(self._source_label()).inc(batch.records)
        m.upserts.inc(upserts)
        m.deletes.inc(deletes)
        for letter in batch.dead:
            m.dead_letters.labels(letter.reason).inc()
        c["records"] += batch.records
        c["upserts"] += upserts
        c["deletes"] += deletes
        c["dead_letters"] += len(batch.dead)
        c["batches"] += 1

    def _source_label(self) -> str:
        return "file" if self.source_file is not None else self.config.kafka.topics.updates

    def _progress(self) -> None:
        now = time.monotonic()
        if now - self._progress_at < _PROGRESS_EVERY_S:
            return
        self._progress_at = now
        c = self.counts
        where = (
            self.source.progress()
            if isinstance(self.source, FileUpdates)
            else f"lag {sum(self.source.lag.values())}"
        )
        log.info(
            "sink: %d records, %d rows written, %d deleted, %d dead letters; %s",
            c["records"],
            c["upserts"],
            c["deletes"],
            c["dead_letters"],
            where,
        )

    # --- dead letters -------------------------------------------------------------------------

    def _dead_letters(self, letters: list[DeadLetter]) -> None:
        """Out before the batch that passed them is written: none is lost (after a crash
        between the two, one may be sent again)."""
        for letter in letters:
            log.warning(
                "not an update (%s) at %s: %s", letter.reason, letter.record.position, letter.detail
            )
        if self.source_file is not None:
            if self._dead_out is None:
                path = self.dead_letter_file or f"{self.source_file}.sink-dead-letters.jsonl"
                self._dead_out = open(path, "ab")  # noqa: SIM115 (open for the whole run)
            for letter in letters:
                self._dead_out.write(encode_dead_letter(letter) + b"\n")
            self._dead_out.flush()
            os.fsync(self._dead_out.fileno())
            return
        from stream_nudge.kafka.common import make_admin, make_producer

        topic = (
            self.sink.dead_letters_topic or f"{self.config.kafka.topics.updates}-sink-dead-letters"
        )
        if self._producer is None:
            k = self.config.kafka
            admin = make_admin(self.config)
            try:
                if topic not in admin.topics():
                    admin.create(topic, k.partitions, k.replication_factor, {})
            finally:
                admin.close()
            self._producer = make_producer(self.config)
        for letter in letters:
            headers = [("reason", letter.reason.encode())]
            self._producer.send(topic, letter.record.key, encode_dead_letter(letter), headers)
        self._producer.flush(30.0)

    def _close_outputs(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.close()
        if self._dead_out is not None:
            self._dead_out.close()
