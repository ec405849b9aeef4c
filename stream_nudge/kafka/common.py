"""Settings shared by every kafka-python client the service makes."""

from __future__ import annotations

# What the Kafka layer raises when the broker or the client fails: the service above catches
# this name and never imports a Kafka client itself.
from kafka.errors import KafkaConfigurationError
from kafka.errors import KafkaError as ClientError

from stream_nudge.config import Config

__all__ = ["ClientError", "client_settings", "is_configuration_error"]


def client_settings(config: Config) -> dict:
    k = config.kafka
    return {
        "bootstrap_servers": [s.strip() for s in k.bootstrap_servers.split(",") if s.strip()],
        "client_id": k.client_id,
        **k.security,
    }


def is_configuration_error(exc: BaseException) -> bool:
    """Whether the Kafka client refused its configuration: retrying cannot help. The clients'
    processes report errors as text (``"KafkaConfigurationError: ..."``)."""
    return isinstance(exc, KafkaConfigurationError) or "KafkaConfigurationError" in str(exc)
