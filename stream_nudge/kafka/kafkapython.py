"""The client seam on kafka-python 3.x (``kafka.client: kafka-python``).

kafka-python heartbeats from a thread of its own; it fetches only inside ``poll``. Record CRCs are
checked by the crc32c package when it is installed (a dependency of ours).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import kafka
import kafka.errors as errors
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.partitioner import DefaultPartitioner
from kafka.structs import OffsetAndMetadata

from stream_nudge.kafka.client import ClientError, Message, TopicPartition

__all__ = ["KafkaAdmin", "KafkaConsumer", "KafkaProducer"]

log = logging.getLogger(__name__)


def _base(bootstrap: str, client_id: str, security: dict) -> dict:
    servers = [s.strip() for s in bootstrap.split(",") if s.strip()]
    return {"bootstrap_servers": servers, "client_id": client_id, **security}


def _error(exc: BaseException) -> ClientError:
    configuration = isinstance(exc, errors.KafkaConfigurationError | ValueError | TypeError)
    fenced = isinstance(exc, errors.ProducerFencedError | errors.InvalidProducerEpochError)
    return ClientError(
        f"{exc.__class__.__name__}: {exc}", configuration=configuration, fenced=fenced
    )


def _theirs(tp: TopicPartition) -> kafka.TopicPartition:
    return kafka.TopicPartition(tp[0], tp[1])


def _ours(tp) -> TopicPartition:
    return TopicPartition(tp.topic, tp.partition)


class _Listener(kafka.ConsumerRebalanceListener):
    def __init__(self, owner: KafkaConsumer, on_assign, on_revoke):
        self.owner, self.on_assign, self.on_revoke = owner, on_assign, on_revoke
        self.consumer = owner._consumer

    def on_partitions_revoked(self, revoked):
        if revoked:
            self.owner._revoking = True
            try:
                self.on_revoke([_ours(tp) for tp in revoked])
            finally:
                self.owner._revoking = False

    def on_partitions_assigned(self, assigned):
        starts, held = self.on_assign([_ours(tp) for tp in assigned])
        for tp in assigned:
            offset = starts.get(_ours(tp))
            if offset is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)
        if held:
            self.consumer.pause(*[_theirs(tp) for tp in held])


#: How old the consumer's metadata may get (see KafkaConsumer.__init__): one small request to
#: the broker this often.
_METADATA_MAX_AGE_MS = 5_000


class KafkaConsumer:
    """:class:`~stream_nudge.kafka.client.Consumer` on kafka.KafkaConsumer."""

    def __init__(
        self,
        bootstrap: str,
        client_id: str,
        security: dict,
        group_id: str,
        max_poll_records: int,
        fetch_max_bytes: int,
        max_partition_fetch_bytes: int,
        read_committed: bool = True,
        session_timeout_ms: int = 45_000,
    ):
        try:
            self._consumer = kafka.KafkaConsumer(
                **_base(bootstrap, client_id, security),
                group_id=group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=max_poll_records,
                fetch_max_bytes=fetch_max_bytes,
                max_partition_fetch_bytes=max_partition_fetch_bytes,
                isolation_level="read_committed" if read_committed else "read_uncommitted",
                session_timeout_ms=session_timeout_ms,
                heartbeat_interval_ms=max(100, session_timeout_ms // 10),
                # The group's leader assigns from its own metadata, and rejoins when that changes.
                # A leader whose first metadata missed the partitions of topics created a moment
                # before (seen in CI: the service was assigned nothing) would otherwise wait for
                # the default refresh, 5 minutes, holding the whole group at nothing.
                metadata_max_age_ms=_METADATA_MAX_AGE_MS,
            )
        except (errors.KafkaError, ValueError, TypeError, AssertionError) as exc:
            raise _error(exc) from exc
        # kafka-python has left the group's generation when it calls the revocation callback, so
        # a commit asked there would be refused: it is made once the rebalance is over, for the
        # partitions still assigned (the group's offsets are informational in this mode).
        self._revoking = False
        self._deferred: dict[TopicPartition, int] = {}

    def subscribe(self, topics, on_assign, on_revoke) -> None:
        self._consumer.subscribe(topics, listener=_Listener(self, on_assign, on_revoke))

    def assign(self, starts: dict[TopicPartition, int]) -> None:
        self._consumer.assign([_theirs(tp) for tp in starts])
        for tp, offset in starts.items():
            self._consumer.seek(_theirs(tp), offset)

    def poll(self, max_records: int, timeout_s: float) -> list[Message]:
        try:
            polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except errors.KafkaError as exc:
            raise _error(exc) from exc
        if self._deferred:
            assigned = self.assignment()
            deferred, self._deferred = self._deferred, {}
            try:
                self.commit({tp: o for tp, o in deferred.items() if tp in assigned})
            except ClientError as exc:  # informational only: a failed commit loses nothing
                if isinstance(exc.__cause__, errors.RebalanceInProgressError):
                    # Another rebalance began (a member left again): after it, at a next poll.
                    self._deferred = {**deferred, **self._deferred}
                else:
                    log.warning("could not commit offsets to the group: %s", exc)
        out = []
        for tp, records in polled.items():
            for r in records:
                stamp = r.timestamp if r.timestamp is not None and r.timestamp >= 0 else None
                headers = r.headers or None
                out.append(
                    Message(tp.topic, tp.partition, r.offset, stamp, r.key, r.value, headers)
                )
        return out

    def assignment(self) -> set[TopicPartition]:
        return {_ours(tp) for tp in self._consumer.assignment()}

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        tps = [_theirs(tp) for tp in partitions]
        if tps:
            self._consumer.pause(*tps)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        tps = [_theirs(tp) for tp in partitions]
        if tps:
            self._consumer.resume(*tps)

    def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        try:
            ends = self._consumer.end_offsets([_theirs(tp) for tp in partitions])
        except errors.KafkaError as exc:
            raise _error(exc) from exc
        return {_ours(tp): offset for tp, offset in ends.items()}

    def committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        try:
            return {tp: self._consumer.committed(_theirs(tp)) for tp in partitions}
        except errors.KafkaError as exc:
            raise _error(exc) from exc

    def position(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        try:
            return {tp: self._consumer.position(_theirs(tp)) for tp in partitions}
        except errors.KafkaError as exc:
            raise _error(exc) from exc

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        if self._revoking:
            self._deferred.update(offsets)
            return
        chosen = {_theirs(tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
        try:
            self._consumer.commit(chosen)
        except errors.KafkaError as exc:
            raise _error(exc) from exc

    def group_metadata(self) -> object:
        return self._consumer.group_metadata()

    def close(self) -> None:
        self._consumer.close(autocommit=False)


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


def _no_stealing(manager) -> None:
    """kafka-python, its epoch bump refused as stale (INVALID_PRODUCER_EPOCH: another producer
    took over the transactional id), falls back to a new producer id for the same transactional
    id, which fences that other producer in turn: a zombie taking the work back from the member
    that replaced it. The Java client, and librdkafka, count that refusal as fenced, fatally;
    so do we, on this producer's transaction manager (a private method of kafka-python 3.x)."""
    from kafka.producer.transaction_manager import TransactionState

    def fenced(_transaction_timeout_ms, result):
        # Called with the manager's lock held (a reentrant Condition).
        fence = errors.ProducerFencedError()
        manager._transition_to(TransactionState.FATAL_ERROR, error=fence)
        result.done(error=fence)

    if hasattr(manager, "_restart_epoch_bump_without_producer_id"):
        manager._restart_epoch_bump_without_producer_id = fenced


class KafkaProducer:
    """:class:`~stream_nudge.kafka.client.Producer` on kafka.KafkaProducer: idempotent, acks=all;
    transactional when given a ``transactional_id``."""

    def __init__(
        self,
        bootstrap: str,
        client_id: str,
        security: dict,
        linger_ms: int,
        batch_size: int,
        max_request_size: int,
        compression_type: str | None,
        transactional_id: str | None = None,
        transaction_timeout_ms: int = 60_000,
    ):
        settings = dict(
            _base(bootstrap, client_id, security),
            acks="all",
            enable_idempotence=True,
            linger_ms=linger_ms,
            batch_size=batch_size,
            max_request_size=max_request_size,
            compression_type=compression_type,
            partitioner=_MemoPartitioner(),
        )
        if transactional_id is not None:
            settings.update(
                transactional_id=transactional_id, transaction_timeout_ms=transaction_timeout_ms
            )
        # No transactional call waits longer than a transaction may live: past that the broker
        # aborts it anyway, and the caller starts over with a new producer.
        self._wait_s = transaction_timeout_ms / 1000.0
        try:
            self._producer = kafka.KafkaProducer(**settings)
            if transactional_id is not None:
                _no_stealing(self._producer._transaction_manager)
                self._producer.init_transactions()
        except (errors.KafkaError, ValueError, TypeError, AssertionError) as exc:
            raise self._error(exc) from exc
        self._failures: list[BaseException] = []

    def _failed(self, exc) -> None:
        self._failures.append(exc)

    def send(self, topic, key, value, headers) -> None:
        try:
            future = self._producer.send(topic, key=key, value=value, headers=headers)
        except errors.KafkaError as exc:
            raise self._error(exc) from exc
        future.add_errback(self._failed)

    def flush(self, timeout_s: float | None = None) -> None:
        try:
            self._producer.flush(timeout=timeout_s)
        except errors.KafkaError as exc:
            raise self._error(exc) from exc
        if self._failures:
            first, self._failures = self._failures[0], []
            raise self._error(first)

    def begin(self) -> None:
        try:
            self._producer.begin_transaction()
        except errors.KafkaError as exc:
            raise self._error(exc) from exc

    def commit(self, offsets: dict[TopicPartition, int], group_metadata: object) -> None:
        chosen = {_theirs(tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
        manager = self._producer._transaction_manager
        try:
            self.flush(self._wait_s)
            if chosen:
                self._bounded(
                    manager.send_offsets_to_transaction(chosen, group_metadata), "sending offsets"
                )
            self._bounded(manager.begin_commit(), "committing the transaction")
        except errors.KafkaError as exc:
            raise self._error(exc) from exc

    def abort(self) -> None:
        try:
            self._bounded(self._producer._transaction_manager.begin_abort(), "aborting")
        except errors.KafkaError as exc:
            raise self._error(exc) from exc
        finally:
            self._failures = []

    def _error(self, exc: BaseException) -> ClientError:
        """As :func:`_error`; any failure once the transactional producer was fenced (kafka-python
        then answers calls with IllegalStateError or KafkaError) counts as fenced."""
        out = _error(exc)
        manager = (
            getattr(self._producer, "_transaction_manager", None)
            if hasattr(self, "_producer")
            else None
        )
        if not out.fenced and manager is not None and manager.is_bumping_epoch():
            # A call refused while kafka-python bumps the epoch (KIP-360): the bump's outcome
            # says whether we were fenced (see _no_stealing); restarting before it would take
            # the transactional id back from the member that fenced us.
            deadline = time.monotonic() + self._wait_s
            while manager.is_bumping_epoch() and time.monotonic() < deadline:
                time.sleep(0.05)
        if (
            not out.fenced
            and manager is not None
            and manager.has_fatal_error()
            and isinstance(manager.last_error, errors.ProducerFencedError)
        ):
            out = ClientError(f"{out} (ProducerFencedError)", out.configuration, fenced=True)
        return out

    def _bounded(self, result, what: str) -> None:
        """kafka-python's transactional calls, with a bound on the wait they do not have: its
        commit_transaction() waits for its result forever (a coordinator that never answers
        after a broker restart holds the loop with it)."""
        self._producer._sender.wakeup()
        if not result.wait(timeout_ms=self._wait_s * 1000.0):
            raise ClientError(f"{what} did not complete within {self._wait_s:.0f} s")

    def close(self) -> None:
        self._producer.close(timeout=10)


class KafkaAdmin:
    def __init__(self, bootstrap: str, client_id: str, security: dict):
        try:
            self._admin = KafkaAdminClient(
                **_base(bootstrap, client_id, security), request_timeout_ms=30_000
            )
        except (errors.KafkaError, ValueError, TypeError, AssertionError) as exc:
            raise _error(exc) from exc

    def topics(self) -> dict[str, int]:
        try:
            described = self._admin.describe_topics()
        except errors.KafkaError as exc:
            raise _error(exc) from exc
        # The key is "name" in the newer metadata responses, "topic" in the older ones.
        return {
            t.get("name") or t.get("topic"): len(t["partitions"])
            for t in described
            if not t.get("error_code")
        }

    def create(self, name: str, partitions: int, replication: int, configs: dict) -> None:
        try:
            self._admin.create_topics(
                [NewTopic(name, partitions, replication, topic_configs=configs)]
            )
        except errors.TopicAlreadyExistsError:
            pass
        except errors.KafkaError as exc:
            raise _error(exc) from exc

    def close(self) -> None:
        self._admin.close()
