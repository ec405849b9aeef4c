"""Prometheus metrics, /healthz, and structured logs for the long-lived service."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Exposed", "JsonFormatter", "Metrics", "SinkMetrics", "setup_logging"]


class Exposed:
    """A registry of metrics served on /metrics, and /healthz: healthy while the loop ticks and
    nothing failed for good."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.last_tick = time.monotonic()
        self.failure: str | None = None  # why the service stopped working, if it did
        self._server: ThreadingHTTPServer | None = None

    def tick(self) -> None:
        """The main loop is alive (for /healthz)."""
        self.last_tick = time.monotonic()

    def fail(self, reason: str) -> None:
        """The service cannot go on: /healthz answers 503 from now on."""
        self.failure = reason

    def healthy(self, stale_after: float) -> bool:
        return self.failure is None and time.monotonic() - self.last_tick < stale_after

    def serve(self, host: str, port: int, stale_after: float = 120.0) -> int:
        """Serve /metrics and /healthz on a background thread; returns the bound port."""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.startswith("/metrics"):
                    body, ctype, status = (
                        generate_latest(metrics.registry),
                        CONTENT_TYPE_LATEST,
                        200,
                    )
                elif self.path.startswith("/healthz"):
                    ok = metrics.healthy(stale_after)
                    body, ctype, status = (
                        (b"ok\n" if ok else b"stalled\n"),
                        "text/plain",
                        200 if ok else 503,
                    )
                else:
                    body, ctype, status = b"not found\n", "text/plain", 404
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", ctype)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # no access log on stderr
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True).start()
        return self._server.server_address[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class Metrics(Exposed):
    """The service's metrics, in a registry of their own."""

    def __init__(self):
        super().__init__()
        r = self.registry
        self.events = Counter(
            "stream_nudge_events_consumed", "Records consumed, by topic", ["topic"], registry=r
        )
        self.dead_letters = Counter(
            "stream_nudge_dead_letters", "Dead letters, by reason", ["reason"], registry=r
        )
        self.updates = Counter(
            "stream_nudge_updates_published", "Updates and tombstones published", registry=r
        )
        self.lag = Gauge(
            "stream_nudge_consumer_lag",
            "Records not yet consumed",
            ["topic", "partition"],
            registry=r,
        )
        self.gamma = Gauge("stream_nudge_gamma", "The gamma in force", registry=r)
        self.score = Gauge(
            "stream_nudge_validation_score",
            "Objective on the validation window",
            ["at"],
            registry=r,
        )
        self.nudged = Gauge(
            "stream_nudge_nudged_documents", "Documents with a non-zero query sum", registry=r
        )
        self.documents = Gauge("stream_nudge_documents", "Live documents", registry=r)
        self.pending = Gauge(
            "stream_nudge_pending_clicks", "Clicks waiting for their document", registry=r
        )
        self.checkpoint_age = Gauge(
            "stream_nudge_checkpoint_age_seconds", "Seconds since the last checkpoint", registry=r
        )
        self.checkpoint_seconds = Histogram(
            "stream_nudge_checkpoint_duration_seconds",
            "Time to flush and write a checkpoint",
            registry=r,
        )
        self.commit_seconds = Histogram(
            "stream_nudge_commit_duration_seconds",
            "exactly_once: time to write the changelog records and commit the transaction",
            registry=r,
        )
        self.commit_records = Histogram(
            "stream_nudge_changelog_records_per_commit",
            "exactly_once: changelog records written by one commit",
            buckets=(0, 1, 10, 100, 1_000, 10_000, 100_000, 1_000_000),
            registry=r,
        )
        self.restore_records = Gauge(
            "stream_nudge_restore_records_read",
            "exactly_once: changelog records read by the current (or last) restore",
            registry=r,
        )
        self.changelog_lag = Gauge(
            "stream_nudge_changelog_lag",
            "exactly_once: changelog records still to read before the member consumes (0 once "
            "restored)",
            registry=r,
        )
        self.cache_seconds = Histogram(
            "stream_nudge_cache_refresh_duration_seconds",
            "exactly_once: time to write a refresh of the local cache (in its own thread)",
            registry=r,
        )
        self.reselection_seconds = Histogram(
            "stream_nudge_reselection_duration_seconds", "Time to re-select gamma", registry=r
        )
        self.last_checkpoint = time.time()

    def tick(self) -> None:
        super().tick()
        self.checkpoint_age.set(time.time() - self.last_checkpoint)


class SinkMetrics(Exposed):
    """``stream-nudge sink``'s metrics."""

    def __init__(self):
        super().__init__()
        r = self.registry
        self.records = Counter(
            "stream_nudge_sink_records_consumed",
            "Update records read, by source",
            ["source"],
            registry=r,
        )
        self.dead_letters = Counter(
            "stream_nudge_sink_dead_letters",
            "Records that are not updates, by reason",
            ["reason"],
            registry=r,
        )
        self.upserts = Counter(
            "stream_nudge_sink_rows_written",
            "Rows inserted or updated in the backend (net of a batch)",
            registry=r,
        )
        self.deletes = Counter(
            "stream_nudge_sink_rows_deleted", "Deletions applied (net of a batch)", registry=r
        )
        self.batch_seconds = Histogram(
            "stream_nudge_sink_batch_duration_seconds",
            "Time to write one batch into the backend (one transaction)",
            registry=r,
        )
        self.batch_records = Histogram(
            "stream_nudge_sink_batch_records",
            "Records (before netting) in one batch",
            buckets=(1, 10, 100, 1_000, 10_000, 100_000),
            registry=r,
        )
        self.lag = Gauge(
            "stream_nudge_sink_lag",
            "Update records not yet in the backend",
            ["topic", "partition"],
            registry=r,
        )
        self.retries = Counter(
            "stream_nudge_sink_retries", "Times the backend or Kafka was unreachable", registry=r
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    _standard: ClassVar[set[str]] = set(vars(logging.LogRecord("", 0, "", 0, "", None, None)))

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._standard and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # kafka-python logs every failed reconnect as an ERROR while a broker is down; the service
    # reports broker trouble itself, once per retry. Its own logs show at DEBUG.
    logging.getLogger("kafka").setLevel(
        logging.DEBUG if root.level <= logging.DEBUG else logging.CRITICAL
    )
