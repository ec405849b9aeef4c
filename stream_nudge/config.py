"""Configuration: a frozen dataclass tree built from YAML and checked at start.

Every key has a default, so an empty file (or none) is a valid configuration. An unknown key or a
bad value raises :class:`ConfigError` naming the key and what is allowed; the CLI turns that into
exit code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from stream_nudge.core.objectives import parse_objective

__all__ = ["Config", "ConfigError", "EngineParams", "load_config"]


class ConfigError(ValueError):
    """A configuration problem, with the dotted key it concerns."""


@dataclass(frozen=True)
class ValidationConfig:
    #: Share of query ids (by a stable hash) that go to validation when an event has no ``split``.
    fraction: float = 0.1
    #: The rolling validation window holds the latest this many validation queries.
    window: int = 2000
    #: A query leaving the window joins the training sums, so no click is wasted.
    fold_evicted: bool = True


@dataclass(frozen=True)
class GammaConfig:
    #: Re-select gamma after this many events (0: never by count).
    every_events: int = 10_000
    #: ... or after this many seconds of event time (0: never by time); whichever comes first.
    every_seconds: float = 60.0
    #: Change gamma only when the new one beats the current one on the window by more than this
    #: (in objective units); default: one validation query's worth, 1 / window size.
    min_improvement: float | None = None
    #: Search gamma in [0, max] only (NUDGE-N: at most 2).
    max: float | None = None


@dataclass(frozen=True)
class DecayConfig:
    #: A training click's weight in its document's query sum halves every this many events
    #: (null: no decay by count). Only the mix of old and new clicks within a document changes.
    half_life_events: float | None = None
    #: ... and every this many seconds of event time ("ts", else the Kafka timestamp; null: none).
    half_life_seconds: float | None = None

    @property
    def enabled(self) -> bool:
        return self.half_life_events is not None or self.half_life_seconds is not None


@dataclass(frozen=True)
class PublishConfig:
    #: Emit a document only if it moved more than this (L2) since its last published version.
    min_change: float = 1e-4
    #: Also publish every document as it arrives, nudged or not.
    initial: bool = False
    #: How published vectors are written: a JSON array, or base64 of little-endian float32.
    encoding: str = "json"


@dataclass(frozen=True)
class PendingConfig:
    #: Events for documents not seen yet wait here; beyond this many, they go to dead letters.
    max_events: int = 100_000
    #: A waiting click expires (a dead letter, "pending_expired") after this many events (null:
    #: never) ...
    max_age_events: float | None = None
    #: ... or this many seconds of event time (null: never).
    max_age_seconds: float | None = None
    #: At the end of a replay, clicks still waiting become dead letters ("pending_at_end")
    #: instead of being only counted in the summary.
    dead_letter_at_end: bool = False


@dataclass(frozen=True)
class ContractConfig:
    #: Dead-letter records with fields the contract does not name ("unknown_field"), so that a
    #: misspelled optional field ("wieght") is not silently ignored. Off: unknown fields are
    #: ignored (a producer may add fields of its own).
    strict: bool = False


@dataclass(frozen=True)
class QueriesConfig:
    #: Each recent query id's split and the documents it named are remembered: a query belongs
    #: to one split (a later event with the other is a "split_conflict" dead letter), and a
    #: re-delivered (query_id, doc_id) pair changes nothing. At least the latest half of this
    #: many query ids (about 250 bytes each, checkpointed).
    remember: int = 200_000
    #: False: a repeated (query_id, doc_id) pair counts again.
    dedupe: bool = True


@dataclass(frozen=True)
class LimitsConfig:
    #: A message longer than this is a dead letter ("oversize").
    max_message_bytes: int = 1 << 20
    #: A vector longer than this is a dead letter ("absurd_size").
    max_dimension: int = 65_536
    #: An event naming more documents than this is a dead letter ("absurd_size").
    max_doc_ids: int = 1000
    #: An event weight outside [-max_weight, max_weight] is a dead letter ("bad_weight").
    max_weight: float = 1e6
    #: Memory for the score tables kept between re-selections (window x nudged documents, 2 or 3
    #: float32 tables). Beyond it every re-selection computes from scratch (slower; same gamma).
    selection_cache_bytes: int = 1 << 30


@dataclass(frozen=True)
class ReplayConfig:
    #: Messages read per batch; publication happens after each batch.
    batch_size: int = 1000
    #: "files": every document, then every event, each file in its order. "time": both files
    #: merged by their "ts" (documents may carry one too), for logs where a document's delete
    #: follows clicks on it.
    order: str = "files"
    #: Warn (on stderr) when more than this share of the input lines were dead letters. A replay
    #: in which no line was valid fails whatever this says.
    warn_rejected_fraction: float = 0.5


@dataclass(frozen=True)
class TopicsConfig:
    docs: str = "docs"
    events: str = "events"
    #: Created compacted (if absent) with the partitions and replication below.
    updates: str = "updates"
    dead_letters: str = "dead-letters"
    #: The state's changelog topics are this name followed by -documents, -sums and -engine
    #: (created compacted if absent); empty: the group id followed by -changelog.
    changelog: str = ""


@dataclass(frozen=True)
class KafkaConfig:
    #: The Kafka client: confluent-kafka (librdkafka) or kafka-python (pure Python).
    client: str = "confluent-kafka"
    #: Comma-separated host:port list (env STREAM_NUDGE_KAFKA_BOOTSTRAP overrides).
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "stream-nudge"
    client_id: str = "stream-nudge"
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    #: Partitions and replication factor for the topics the service creates (updates, dead letters).
    partitions: int = 3
    replication_factor: int = 1
    #: Records per poll (a batch); bounds memory under backpressure.
    max_poll_records: int = 1000
    poll_timeout_ms: int = 500
    #: The group drops a member it has not heard from for this long (heartbeats are sent by the
    #: client's own thread, also while a checkpoint or a restore runs).
    session_timeout_ms: int = 45_000
    #: Fetch sizes, large enough for batches of embeddings.
    fetch_max_bytes: int = 52_428_800
    max_partition_fetch_bytes: int = 10_485_760
    #: Producer batching; messages of 384 float32 vectors are about 2-8 KB.
    linger_ms: int = 20
    batch_size: int = 1_048_576
    max_request_size: int = 10_485_760
    compression_type: str | None = None
    #: TLS and SASL, in kafka-python's names (security_protocol, sasl_mechanism,
    #: sasl_plain_username, ssl_cafile, ...), translated for confluent-kafka. Secrets: env
    #: STREAM_NUDGE_KAFKA_SASL_PASSWORD / _SSL_PASSWORD override.
    security: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointConfig:
    #: Directory of the checkpoint file (and the previous one).
    directory: str = "./state"
    #: Write a checkpoint this often (and at shutdown and on partition revocation).
    every_seconds: float = 30.0
    #: Keep the previous checkpoint beside the current one.
    keep_previous: bool = True
    #: If the current checkpoint is corrupt, start from the previous one instead of refusing.
    fallback_to_previous: bool = False


@dataclass(frozen=True)
class ProcessingConfig:
    #: exactly_once: each commit is one Kafka transaction holding the updates, the dead letters,
    #: the state's changelog records and the input offsets (a read_committed reader of the
    #: updates sees each (document, generation) once); the state lives in the changelog topics.
    #: at_least_once: the state and offsets are checkpointed to a file in checkpoint.directory;
    #: updates sent after the last checkpoint may be sent again after a crash.
    guarantee: str = "exactly_once"
    #: exactly_once: commit this often, or after this many input records, whichever comes first
    #: (updates become visible to read_committed readers at a commit).
    commit_interval_ms: int = 1000
    commit_records: int = 50_000
    #: exactly_once: once the input is caught up (a poll brought fewer records than it may),
    #: commit what was done after this many ms already, so that updates become visible sooner
    #: when the service keeps up; under load commits stay commit_interval_ms apart (0: off).
    caught_up_commit_ms: int = 200
    #: exactly_once: refresh the member's local cache of the changelog (a file in
    #: checkpoint.directory; a restart reads it, then only the changelog's tail) this often, in
    #: a thread of its own (0: no local cache; a restart reads the whole changelog).
    cache_interval_ms: int = 60_000
    #: exactly_once: the producer's transactional id (empty: the group id followed by -txn). A
    #: member that starts with it fences the one that had it before.
    transactional_id: str = ""


@dataclass(frozen=True)
class SinkConfig:
    """``stream-nudge sink``: the updates topic (or an updates JSONL file) into a search backend."""

    #: The backend: postgresql://USER[:PASSWORD]@HOST:PORT/DB (pgvector; ?table=NAME may name the
    #: table) or lancedb://PATH?table=NAME (env STREAM_NUDGE_SINK_TO and --to override).
    to: str = ""
    #: The table the embeddings go to (PostgreSQL: schema.table allowed); a table named in the
    #: URL wins. Beside it: <table>_offsets (where the sink resumes) and <table>_deleted.
    table: str = "stream_nudge_embeddings"
    #: Create what is missing (pgvector's extension, the table and its HNSW index; LanceDB's
    #: directory and tables) instead of refusing to start (--create).
    create: bool = False
    #: With create: build the vector index (pgvector: HNSW once the sink has caught up; LanceDB:
    #: IVF-PQ once the table holds lancedb_index_min_rows rows). false: searches scan exactly
    #: (or build an index of your choice yourself).
    index: bool = True
    #: A batch (one backend transaction) is written after this many records or this many ms,
    #: whichever comes first, and at once when the input is caught up.
    batch_records: int = 5000
    batch_ms: int = 200
    #: Records that are not updates go to this topic with their reason (empty: the updates topic
    #: followed by -sink-dead-letters; created if absent).
    dead_letters_topic: str = ""
    #: /metrics and /healthz of the sink (0: off); beside `run`'s metrics.port on one host.
    metrics_port: int = 9109
    #: LanceDB: create the vector index once the table holds this many rows (an exact scan is
    #: fast below that), and compact / fold new rows into the index this often.
    lancedb_index_min_rows: int = 100_000
    lancedb_optimize_interval_s: float = 600.0


@dataclass(frozen=True)
class MetricsConfig:
    #: Prometheus metrics and /healthz on this port (0: off).
    port: int = 9108
    host: str = "0.0.0.0"


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"
    #: "text" or "json" (one JSON object per line).
    format: str = "text"


@dataclass(frozen=True)
class ServiceConfig:
    #: When caught up with every partition and clicks came since the last selection, select gamma
    #: after this long without input (the live counterpart of replay's final selection).
    idle_select_seconds: float = 2.0
    #: Retry a broker that is down with exponential backoff up to this many seconds.
    retry_backoff_max_seconds: float = 30.0


@dataclass(frozen=True)
class EngineParams:
    """The engine's part of the configuration: what NUDGE needs to know, and nothing about where
    records come from or go (no Kafka, files, checkpoints or metrics). ``Config.engine_params()``
    takes it from the whole tree, which extends it (:class:`Config`); the sections are the tree's
    own, checked with it."""

    #: "nudge-n" (unit-norm output, cosine or dot) or "nudge-m" (dot product only).
    method: str = "nudge-n"
    #: The objective gamma maximises on the validation window: hit@K, mrr, mrr@K, ndcg@K.
    objective: str = "hit@1"
    #: The embedding dimension; null: fixed by the first valid vector.
    dimension: int | None = None
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    gamma: GammaConfig = field(default_factory=GammaConfig)
    decay: DecayConfig = field(default_factory=DecayConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    pending: PendingConfig = field(default_factory=PendingConfig)
    queries: QueriesConfig = field(default_factory=QueriesConfig)
    contract: ContractConfig = field(default_factory=ContractConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    @property
    def similarity(self) -> str:
        """What search backends should rank the published vectors by."""
        return "cosine" if self.method == "nudge-n" else "dot"

    @property
    def min_improvement(self) -> float:
        """The hysteresis of a change of gamma (default: one query of the window)."""
        if self.gamma.min_improvement is not None:
            return self.gamma.min_improvement
        return 1.0 / max(self.validation.window, 1)


@dataclass(frozen=True)
class Config(EngineParams):
    """The whole configuration: the engine's part (:class:`EngineParams`, its fields come
    first) and the rest (replay, Kafka, checkpoints, metrics, logging, the service)."""

    replay: ReplayConfig = field(default_factory=ReplayConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    processing: ProcessingConfig = field(default_factory=ProcessingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)

    def engine_params(self) -> EngineParams:
        """The engine's part of this configuration, without the rest."""
        return EngineParams(**{f.name: getattr(self, f.name) for f in fields(EngineParams)})

    def __post_init__(self) -> None:
        _check(self)


# kafka.security: the keys kafka-python takes for TLS and SASL, and the values it knows.
SECURITY_KEYS = frozenset(
    (
        "security_protocol",
        "ssl_check_hostname",
        "ssl_cafile",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_crlfile",
        "ssl_ciphers",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "sasl_kerberos_name",
        "sasl_kerberos_service_name",
        "sasl_kerberos_domain_name",
    )
)
SECURITY_VALUES = {
    "security_protocol": ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    "sasl_mechanism": ("PLAIN", "GSSAPI", "OAUTHBEARER", "SCRAM-SHA-256", "SCRAM-SHA-512"),
}


def _check_security(security: dict, fail) -> None:
    for key, value in security.items():
        if key not in SECURITY_KEYS:
            close = difflib.get_close_matches(str(key), SECURITY_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            fail(
                f"kafka.security.{key}",
                f"unknown key{hint}; allowed: {', '.join(sorted(SECURITY_KEYS))}",
            )
        allowed = SECURITY_VALUES.get(key)
        if allowed is not None and value not in allowed:
            fail(f"kafka.security.{key}", f"{value!r} is not one of {', '.join(allowed)}")
        if key == "ssl_check_hostname" and not isinstance(value, bool):
            fail(f"kafka.security.{key}", "must be true or false")
        # A file the client opens only when it connects: missing, it would fail every retry.
        if key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_crlfile") and not (
            isinstance(value, str) and os.path.isfile(value)
        ):
            fail(f"kafka.security.{key}", f"no such file: {value!r}")
    mechanism = security.get("sasl_mechanism")
    if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        for key in ("sasl_plain_username", "sasl_plain_password"):
            if not security.get(key):
                fail(
                    f"kafka.security.{key}",
                    f"required with sasl_mechanism {mechanism} (or env "
                    f"STREAM_NUDGE_KAFKA_{key.upper().replace('_PLAIN', '')})",
                )


def _check(c: Config) -> None:
    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{key}: {message}")

    if c.method not in ("nudge-n", "nudge-m"):
        fail("method", f"{c.method!r} is not one of 'nudge-n', 'nudge-m'")
    try:
        parse_objective(c.objective)
    except ValueError as exc:
        fail("objective", str(exc).split(": ", 1)[-1])
    if c.dimension is not None and not 1 <= c.dimension <= c.limits.max_dimension:
        fail("dimension", f"must be between 1 and limits.max_dimension ({c.limits.max_dimension})")
    if not 0.0 <= c.validation.fraction < 1.0:
        fail("validation.fraction", "must be in [0, 1)")
    if c.validation.window < 1:
        fail("validation.window", "must be >= 1")
    if c.gamma.every_events < 0:
        fail("gamma.every_events", "must be >= 0 (0 disables)")
    if c.gamma.every_seconds < 0:
        fail("gamma.every_seconds", "must be >= 0 (0 disables)")
    if c.gamma.min_improvement is not None and c.gamma.min_improvement < 0:
        fail("gamma.min_improvement", "must be >= 0 or null")
    if c.gamma.max is not None:
        if c.gamma.max < 0:
            fail("gamma.max", "must be >= 0 or null")
        if c.method == "nudge-n" and c.gamma.max >= 2:
            fail("gamma.max", "must be < 2 for nudge-n")

    def positive_or_null(section, key: str, what: str) -> None:
        value = getattr(getattr(c, section), key)
        if value is not None and not (value > 0 and math.isfinite(value)):
            fail(f"{section}.{key}", f"must be a positive number or null ({what})")

    for name in ("half_life_events", "half_life_seconds"):
        positive_or_null("decay", name, "no decay")
    if c.publish.min_change < 0:
        fail("publish.min_change", "must be >= 0")
    if c.publish.encoding not in ("json", "base64"):
        fail("publish.encoding", f"{c.publish.encoding!r} is not one of 'json', 'base64'")
    if c.replay.order not in ("files", "time"):
        fail("replay.order", f"{c.replay.order!r} is not 'files' or 'time'")
    if not 0.0 <= c.replay.warn_rejected_fraction <= 1.0:
        fail("replay.warn_rejected_fraction", "must be between 0 and 1")
    if c.pending.max_events < 0:
        fail("pending.max_events", "must be >= 0")
    for key in ("max_age_events", "max_age_seconds"):
        positive_or_null("pending", key, "never expire")
    if c.queries.remember < 2:
        fail("queries.remember", "must be >= 2")
    for name in ("max_message_bytes", "max_dimension", "max_doc_ids"):
        if getattr(c.limits, name) < 1:
            fail(f"limits.{name}", "must be >= 1")
    if not c.limits.max_weight > 0:
        fail("limits.max_weight", "must be > 0")
    if c.limits.selection_cache_bytes < 0:
        fail("limits.selection_cache_bytes", "must be >= 0 (0: keep nothing between selections)")
    if c.replay.batch_size < 1:
        fail("replay.batch_size", "must be >= 1")
    k = c.kafka
    if k.client not in ("confluent-kafka", "kafka-python"):
        fail("kafka.client", f"{k.client!r} is not confluent-kafka or kafka-python")
    if not k.bootstrap_servers.strip():
        fail("kafka.bootstrap_servers", "must name at least one host:port")
    for name in ("docs", "events", "updates", "dead_letters"):
        if not getattr(k.topics, name).strip():
            fail(f"kafka.topics.{name}", "must not be empty")
    # An output topic that is an input would feed the service its own output.
    seen_topics: dict[str, str] = {}
    for name in ("docs", "events", "updates", "dead_letters"):
        topic = getattr(k.topics, name)
        if topic in seen_topics:
            fail(
                f"kafka.topics.{name}",
                f"{topic!r} is also kafka.topics.{seen_topics[topic]}; each topic has one role",
            )
        seen_topics[topic] = name
    _check_security(k.security, fail)
    for name in (
        "partitions",
        "replication_factor",
        "max_poll_records",
        "poll_timeout_ms",
        "session_timeout_ms",
        "fetch_max_bytes",
        "max_partition_fetch_bytes",
        "batch_size",
        "max_request_size",
    ):
        if getattr(k, name) < 1:
            fail(f"kafka.{name}", "must be >= 1")
    if k.linger_ms < 0:
        fail("kafka.linger_ms", "must be >= 0")
    if k.compression_type not in (None, "gzip", "snappy", "lz4", "zstd"):
        fail("kafka.compression_type", "must be null, gzip, snappy, lz4 or zstd")
    if c.checkpoint.every_seconds <= 0:
        fail("checkpoint.every_seconds", "must be > 0")
    if c.processing.guarantee not in ("exactly_once", "at_least_once"):
        fail("processing.guarantee", "must be exactly_once or at_least_once")
    if c.processing.commit_interval_ms < 1:
        fail("processing.commit_interval_ms", "must be >= 1")
    if c.processing.commit_records < 1:
        fail("processing.commit_records", "must be >= 1")
    if c.processing.caught_up_commit_ms < 0:
        fail("processing.caught_up_commit_ms", "must be >= 0 (0: off)")
    if c.processing.cache_interval_ms < 0:
        fail("processing.cache_interval_ms", "must be >= 0 (0: no local cache)")
    if not 0 <= c.metrics.port <= 65535:
        fail("metrics.port", "must be between 0 (off) and 65535")
    if c.logging.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        fail("logging.level", "must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    if c.logging.format not in ("text", "json"):
        fail("logging.format", "must be 'text' or 'json'")
    if c.service.idle_select_seconds < 0:
        fail("service.idle_select_seconds", "must be >= 0")
    if c.service.retry_backoff_max_seconds <= 0:
        fail("service.retry_backoff_max_seconds", "must be > 0")
    sink = c.sink
    if sink.to and not sink.to.startswith(("postgresql://", "postgres://", "lancedb://")):
        fail("sink.to", "must be postgresql://USER@HOST:PORT/DB or lancedb://PATH?table=NAME")
    if not sink.table.strip():
        fail("sink.table", "must not be empty")
    if sink.batch_records < 1:
        fail("sink.batch_records", "must be >= 1")
    if sink.batch_ms < 0:
        fail("sink.batch_ms", "must be >= 0")
    if not 0 <= sink.metrics_port <= 65535:
        fail("sink.metrics_port", "must be between 0 (off) and 65535")
    if sink.lancedb_index_min_rows < 1:
        fail("sink.lancedb_index_min_rows", "must be >= 1")
    if sink.lancedb_optimize_interval_s <= 0:
        fail("sink.lancedb_optimize_interval_s", "must be > 0")


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> Config:
    """Read a YAML file (or nothing: all defaults) into a checked :class:`Config`.

    ``overrides`` is a nested dict applied on top of the file, as from environment variables.

    >>> load_config(overrides={"method": "nudge-m"}).similarity
    'dot'
    """
    data: Any = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"config file {p}: cannot read it ({exc.strerror or exc})") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p}: not valid YAML ({exc})") from exc
        data = {} if data is None else data
    if overrides:
        data = _merge(data, overrides)
    data = _merge(data, env_overrides(os.environ)) if isinstance(data, dict) else data
    return build(Config, data, "")


#: Environment variables that override the file: the broker address and secrets.
ENV_OVERRIDES = {
    "STREAM_NUDGE_KAFKA_BOOTSTRAP": ("kafka", "bootstrap_servers"),
    "STREAM_NUDGE_KAFKA_SASL_USERNAME": ("kafka", "security", "sasl_plain_username"),
    "STREAM_NUDGE_KAFKA_SASL_PASSWORD": ("kafka", "security", "sasl_plain_password"),
    "STREAM_NUDGE_KAFKA_SSL_PASSWORD": ("kafka", "security", "ssl_password"),
    # Deploy files set the state directory here, whatever config file is mounted.
    "STREAM_NUDGE_STATE_DIR": ("checkpoint", "directory"),
    # ... and the metrics port, which the container's health check reads too.
    "STREAM_NUDGE_METRICS_PORT": ("metrics", "port"),
    # The sink's backend URL may hold a password; its metrics port, for its container's checks.
    "STREAM_NUDGE_SINK_TO": ("sink", "to"),
    "STREAM_NUDGE_SINK_METRICS_PORT": ("sink", "metrics_port"),
}
# Overrides that are whole numbers (a value that is not one is left for the check to refuse).
_INT_ENV = frozenset(("STREAM_NUDGE_METRICS_PORT", "STREAM_NUDGE_SINK_METRICS_PORT"))


def env_overrides(environ) -> dict:
    out: dict = {}
    for name, path in ENV_OVERRIDES.items():
        value = environ.get(name)
        if value and name in _INT_ENV and value.strip().isdigit():
            value = int(value)
        if value:
            node = out
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
    return out


def _merge(base: Any, extra: dict) -> dict:
    out = dict(base) if isinstance(base, dict) else {}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def build(cls, data: Any, prefix: str):
    """Build dataclass ``cls`` from a mapping, checking keys and types as it goes."""
    where = prefix or "the top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(f"{key}: unknown key; allowed here: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        values[name] = _coerce(hints[name], value, key)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _coerce(hint, value: Any, key: str):
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: must not be null")
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if hint is dict or typing.get_origin(hint) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): v for k, v in value.items()}
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(value)
    return value
