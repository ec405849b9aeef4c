"""The client seam on confluent-kafka (librdkafka): the default client.

librdkafka runs its own threads for the network, the group's heartbeats and delivery; a poll
here only hands over what they fetched and runs the rebalance callbacks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import confluent_kafka as ck
from confluent_kafka.admin import AdminClient, NewTopic

from stream_nudge.kafka.client import ClientError, Message, TopicPartition

__all__ = ["KafkaAdmin", "KafkaConsumer", "KafkaProducer"]

log = logging.getLogger(__name__)

# librdkafka's names for kafka-python's security settings (config.kafka.security keys).
_SECURITY = {
    "security_protocol": "security.protocol",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
    "ssl_crlfile": "ssl.crl.location",
    "ssl_ciphers": "ssl.cipher.suites",
    "sasl_mechanism": "sasl.mechanisms",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "sasl_kerberos_service_name": "sasl.kerberos.service.name",
}


def _base(bootstrap: str, client_id: str, security: dict) -> dict:
    conf = {"bootstrap.servers": bootstrap, "client.id": client_id}
    for key, value in security.items():
        if key == "ssl_check_hostname":
            conf["ssl.endpoint.identification.algorithm"] = "https" if value else "none"
        elif key in _SECURITY:
            conf[_SECURITY[key]] = value
    return conf


def _error(exc: BaseException) -> ClientError:
    """Our ClientError for a confluent-kafka exception (or KafkaError)."""
    err = exc.args[0] if exc.args and isinstance(exc.args[0], ck.KafkaError) else None
    if isinstance(exc, ck.KafkaError):
        err = exc
    if err is None:
        configuration = isinstance(exc, ValueError | TypeError)
        return ClientError(f"{exc.__class__.__name__}: {exc}", configuration=configuration)
    fenced = err.code() in (ck.KafkaError._FENCED, ck.KafkaError.PRODUCER_FENCED)
    configuration = err.code() in (ck.KafkaError._INVALID_ARG, ck.KafkaError._UNKNOWN_PROTOCOL)
    return ClientError(f"{err.name()}: {err.str()}", configuration=configuration, fenced=fenced)


def _ours(tp) -> TopicPartition:
    return TopicPartition(tp.topic, tp.partition)


class KafkaConsumer:
    """:class:`~stream_nudge.kafka.client.Consumer` on confluent_kafka.Consumer."""

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
        conf = _base(bootstrap, client_id, security)
        conf.update(
            {
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "fetch.max.bytes": fetch_max_bytes,
                "max.partition.fetch.bytes": max_partition_fetch_bytes,
                "isolation.level": "read_committed" if read_committed else "read_uncommitted",
                "session.timeout.ms": session_timeout_ms,
                "heartbeat.interval.ms": max(100, session_timeout_ms // 10),
            }
        )
        try:
            self._consumer = ck.Consumer(conf, logger=log)
        except (ck.KafkaException, ValueError, TypeError) as exc:
            raise _error(exc) from exc
        self._paused: set[tuple[str, int]] = set()

    def subscribe(self, topics, on_assign, on_revoke) -> None:
        def assigned(consumer, partitions):
            starts, held = on_assign([_ours(tp) for tp in partitions])
            for tp in partitions:
                offset = starts.get(_ours(tp))
                tp.offset = ck.OFFSET_BEGINNING if offset is None else offset
            consumer.assign(partitions)
            self.pause(held)

        def revoked(consumer, partitions):
            on_revoke([_ours(tp) for tp in partitions])
            consumer.unassign()

        try:
            self._consumer.subscribe(topics, on_assign=assigned, on_revoke=revoked)
        except ck.KafkaException as exc:
            raise _error(exc) from exc

    def assign(self, starts: dict[TopicPartition, int]) -> None:
        self._consumer.assign([ck.TopicPartition(t, p, o) for (t, p), o in starts.items()])

    def poll(self, max_records: int, timeout_s: float) -> list[Message]:
        # consume() waits until it has max_records or the timeout passed: take what is there,
        # and only if nothing is, wait for the first record (then take what came with it).
        consume = self._consumer.consume
        try:
            polled = consume(num_messages=max_records, timeout=0)
            if not polled:
                polled = consume(num_messages=1, timeout=timeout_s)
                if polled and max_records > 1:
                    polled += consume(num_messages=max_records - 1, timeout=0)
        except ck.KafkaException as exc:
            raise _error(exc) from exc
        out = []
        for m in polled:
            err = m.error()
            if err is not None:
                if err.code() == ck.KafkaError._PARTITION_EOF:
                    continue
                if err.fatal() or not err.retriable():
                    raise _error(err)
                log.warning("consumer: %s", err.str())
                continue
            kind, stamp = m.timestamp()
            out.append(
                Message(
                    m.topic(),
                    m.partition(),
                    m.offset(),
                    stamp if kind != ck.TIMESTAMP_NOT_AVAILABLE else None,
                    m.key(),
                    m.value(),
                    m.headers(),
                )
            )
        return out

    def assignment(self) -> set[TopicPartition]:
        return {_ours(tp) for tp in self._consumer.assignment()}

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        tps = [ck.TopicPartition(t, p) for t, p in partitions]
        if tps:
            self._consumer.pause(tps)
            self._paused.update((tp.topic, tp.partition) for tp in tps)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        tps = [ck.TopicPartition(t, p) for t, p in partitions]
        if tps:
            self._consumer.resume(tps)
            self._paused.difference_update((tp.topic, tp.partition) for tp in tps)

    def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        # The high watermark every fetch response brings (no round trip); asked of the broker
        # only for a partition not fetched yet, or paused (its cached value may be old).
        out = {}
        watermarks = self._consumer.get_watermark_offsets
        try:
            for t, p in partitions:
                tp = ck.TopicPartition(t, p)
                _, high = watermarks(tp, cached=True)
                if high < 0 or (t, p) in self._paused:
                    _, high = watermarks(tp, timeout=10.0, cached=False)
                out[TopicPartition(t, p)] = high
        except ck.KafkaException as exc:
            raise _error(exc) from exc
        return out

    def committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        try:
            got = self._consumer.committed([ck.TopicPartition(t, p) for t, p in partitions], 30.0)
        except ck.KafkaException as exc:
            raise _error(exc) from exc
        return {_ours(tp): (tp.offset if tp.offset >= 0 else None) for tp in got}

    def position(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        try:
            got = self._consumer.position([ck.TopicPartition(t, p) for t, p in partitions])
        except ck.KafkaException as exc:
            raise _error(exc) from exc
        # A partition nothing was read from yet has no position (a negative logical offset).
        return {_ours(tp): max(tp.offset, 0) for tp in got}

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        tps = [ck.TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self._consumer.commit(offsets=tps, asynchronous=False)
        except ck.KafkaException as exc:
            raise _error(exc) from exc

    def group_metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def close(self) -> None:
        self._consumer.close()


class _Watch:
    """librdkafka's log lines, passed on to this module's logger; the first FATAL one is kept
    (a fatal error is always logged, but a call made after it may only raise "_FATAL", or a
    SystemError from a callback)."""

    def __init__(self):
        self.fatal: str | None = None

    def log(self, level, msg, *args, **kwargs):
        log.log(level, msg, *args, **kwargs)
        text = msg % args if args else str(msg)
        if self.fatal is None and text.startswith("FATAL "):
            self.fatal = text


class KafkaProducer:
    """:class:`~stream_nudge.kafka.client.Producer` on confluent_kafka.Producer: idempotent,
    acks=all; transactional when given a ``transactional_id``."""

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
        conf = _base(bootstrap, client_id, security)
        conf.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": linger_ms,
                "batch.size": batch_size,
                "message.max.bytes": max_request_size,
                "compression.type": compression_type or "none",
                # The Java client's key hash, so that both clients (and Kafka Streams) put a
                # document id in the same partition.
                "partitioner": "murmur2_random",
                # A delivery report (a Python call) only for a record that failed.
                "delivery.report.only.error": True,
            }
        )
        # No transactional call waits longer than a transaction may live (see commit).
        self._wait_s = transaction_timeout_ms / 1000.0
        if transactional_id is not None:
            conf["transactional.id"] = transactional_id
            conf["transaction.timeout.ms"] = transaction_timeout_ms
        self._transactional = transactional_id is not None
        self._watch = _Watch()
        try:
            self._producer = ck.Producer(conf, logger=self._watch)
            if transactional_id is not None:
                self._producer.init_transactions(60.0)
        except (ck.KafkaException, ValueError, TypeError) as exc:
            raise self._error(exc) from exc
        self._failures: list[ck.KafkaError] = []
        self._sent = 0

    def _error(self, exc: BaseException) -> ClientError:
        """As :func:`_error`; for a transactional producer, "_FATAL" (what every call answers
        once the producer hit a fatal error, whose own report librdkafka logs as FATAL and
        rarely raises) counts as fenced: such a producer can never commit again, and the most
        common cause by far is a newer member with the same transactional id. Restarting would
        fence that member in turn."""
        # A fatal error raised while librdkafka serves a delivery callback surfaces as a
        # SystemError caused by the KafkaException: report that one.
        while isinstance(exc, SystemError) and (exc.__cause__ or exc.__context__) is not None:
            exc = exc.__cause__ or exc.__context__
        out = _error(exc)
        err = exc.args[0] if exc.args and isinstance(exc.args[0], ck.KafkaError) else exc
        fatal = isinstance(err, ck.KafkaError) and (
            err.fatal() or err.code() == ck.KafkaError._FATAL
        )
        # Whatever the call raised, librdkafka logged its fatal error (see _Watch).
        if self._transactional and not out.fenced and (fatal or self._watch.fatal is not None):
            out = ClientError(
                f"{out} (a fatal error of the transactional producer: "
                f"{self._watch.fatal or 'see the FATAL line logged before'}; most often another "
                "member took over its transactional id)",
                out.configuration,
                fenced=True,
            )
        return out

    def _delivered(self, err, _message) -> None:
        if err is not None:
            self._failures.append(err)

    def send(self, topic, key, value, headers) -> None:
        try:
            while True:
                try:
                    self._producer.produce(
                        topic, value=value, key=key, headers=headers, on_delivery=self._delivered
                    )
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    self._producer.poll(0.1)
            self._sent += 1
            if self._sent % 256 == 0:  # serve the (error) reports now and then
                self._producer.poll(0)
        except (ck.KafkaException, SystemError) as exc:  # also from poll: fatal errors
            raise self._error(exc) from exc

    def flush(self, timeout_s: float | None = None) -> None:
        try:
            left = self._producer.flush(-1 if timeout_s is None else timeout_s)
        except (ck.KafkaException, SystemError) as exc:  # fatal errors, from the callbacks
            raise self._error(exc) from exc
        if self._failures:
            first, self._failures = self._failures[0], []
            raise self._error(first)
        if left:
            raise ClientError(f"{left} messages not delivered within {timeout_s} s")

    def begin(self) -> None:
        try:
            self._producer.begin_transaction()
        except ck.KafkaException as exc:
            raise self._error(exc) from exc

    def commit(self, offsets: dict[TopicPartition, int], group_metadata: object) -> None:
        tps = [ck.TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            # Bounded: records that cannot be delivered (a producer without its transactional id
            # after a broker restart) would otherwise hold the loop forever; past a transaction's
            # life the broker aborts it anyway, and the caller starts over with a new producer.
            self.flush(self._wait_s)
            if tps:
                self._producer.send_offsets_to_transaction(tps, group_metadata, self._wait_s)
            self._producer.commit_transaction(self._wait_s)
        except ck.KafkaException as exc:
            raise self._error(exc) from exc

    def abort(self) -> None:
        try:
            self._producer.abort_transaction(self._wait_s)
        except ck.KafkaException as exc:
            raise self._error(exc) from exc
        finally:
            self._failures = []

    def close(self) -> None:
        self._producer.flush(10.0)


class KafkaAdmin:
    def __init__(self, bootstrap: str, client_id: str, security: dict):
        self._admin = AdminClient(_base(bootstrap, client_id, security), logger=log)

    def topics(self) -> dict[str, int]:
        try:
            meta = self._admin.list_topics(timeout=30.0)
        except ck.KafkaException as exc:
            raise _error(exc) from exc
        return {name: len(t.partitions) for name, t in meta.topics.items() if t.error is None}

    def create(self, name: str, partitions: int, replication: int, configs: dict) -> None:
        topic = NewTopic(name, partitions, replication, config=configs)
        future = self._admin.create_topics([topic], operation_timeout=30.0)[name]
        try:
            future.result()
        except ck.KafkaException as exc:
            err = exc.args[0]
            if err.code() != ck.KafkaError.TOPIC_ALREADY_EXISTS:
                raise _error(exc) from exc

    def close(self) -> None:
        pass
