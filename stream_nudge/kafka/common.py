"""The service's Kafka clients, made from the configuration through the client seam."""

from __future__ import annotations

from stream_nudge.config import Config
from stream_nudge.kafka.client import Admin, ClientError, Consumer, Producer, clients

__all__ = ["ClientError", "is_configuration_error", "make_admin", "make_consumer", "make_producer"]


def make_consumer(config: Config, group_id: str | None = None) -> Consumer:
    k = config.kafka
    return clients(config).consumer(
        k.bootstrap_servers,
        k.client_id,
        k.security,
        group_id or k.group_id,
        k.max_poll_records,
        k.fetch_max_bytes,
        k.max_partition_fetch_bytes,
        session_timeout_ms=k.session_timeout_ms,
    )


def make_producer(config: Config, transactional_id: str | None = None) -> Producer:
    k = config.kafka
    return clients(config).producer(
        k.bootstrap_servers,
        k.client_id,
        k.security,
        k.linger_ms,
        k.batch_size,
        k.max_request_size,
        k.compression_type,
        transactional_id=transactional_id,
    )


def make_admin(config: Config) -> Admin:
    k = config.kafka
    return clients(config).admin(k.bootstrap_servers, k.client_id, k.security)


def is_configuration_error(exc: BaseException) -> bool:
    """Whether the Kafka client refused its configuration: retrying cannot help."""
    return isinstance(exc, ClientError) and exc.configuration
