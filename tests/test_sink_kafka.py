"""``stream-nudge sink`` reading the updates topic of the real broker, with both clients, into the
real PostgreSQL server and LanceDB: only committed records count, killed runs resume from the
backend's offsets, dead letters reach their topic, a database that goes away is waited for.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import confluent_kafka as ck
import orjson
import pytest
import yaml
from backend_helpers import lance_content, pg_content
from test_sink import DIM, compacted, update_stream

from stream_nudge.messages import encode_update

pytestmark = pytest.mark.kafka


@pytest.fixture(params=["confluent-kafka", "kafka-python"])
def client(request) -> str:
    return request.param


def produce_updates(
    bootstrap: str, topic: str, stream, transactional: str | None = None, abort=False
):
    """The updates as the service writes them: key = id, the generation in a header, a null value
    for a deletion."""
    conf = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    if transactional:
        conf["transactional.id"] = transactional
    producer = ck.Producer(conf)
    if transactional:
        producer.init_transactions(30)
        producer.begin_transaction()
    for doc_id, generation, vector in stream:
        value = (
            None
            if vector is None
            else encode_update(doc_id, vector, "nudge-n", 0.1, generation, "cosine")
        )
        producer.produce(
            topic, value, doc_id.encode(), headers=[("generation", str(generation).encode())]
        )
    if transactional:
        (producer.abort_transaction if abort else producer.commit_transaction)(30)
    producer.flush(30)


def config_file(
    path: Path, bootstrap: str, client: str, topic: str, to: str, table: str, **sink
) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "kafka": {
                    "client": client,
                    "bootstrap_servers": bootstrap,
                    "group_id": f"g-{topic}",
                    "topics": {"updates": topic},
                    "poll_timeout_ms": 200,
                },
                "sink": {"to": to, "table": table, "create": True, "metrics_port": 0, **sink},
                "logging": {"level": "INFO"},
                "service": {"retry_backoff_max_seconds": 1},
            }
        )
    )
    return path


def start_sink(config: Path, log: Path, **env) -> subprocess.Popen:
    environment = dict(os.environ, **env)
    environment.pop("STREAM_NUDGE_KAFKA_BOOTSTRAP", None)
    return subprocess.Popen(
        [sys.executable, "-m", "stream_nudge", "sink", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=environment,
    )


def wait_for(content, want, proc: subprocess.Popen | None, log: Path, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = content()
        if sorted(got) == sorted(want) and all(got[i][0] == want[i][0] for i in want):
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"the sink exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            )
        time.sleep(0.3)
    raise AssertionError(
        f"the backend never held the updates; last {len(got or {})} rows:\n{log.read_text()[-3000:]}"
    )


def target(backend: str, tmp_path: Path, request):
    """``(url, table, read)`` of a fresh table in either backend; ``read()``: what it holds."""
    table = f"t_{uuid.uuid4().hex[:10]}"
    if backend == "lancedb":
        path = tmp_path / "lance"
        return f"lancedb://{path}", table, lambda: lance_content(path, table)
    dsn = request.getfixturevalue("postgres_dsn")
    return dsn, table, lambda: pg_content(dsn, table)


@pytest.mark.parametrize("backend", ["postgresql", "lancedb"])
def test_sink_holds_the_committed_updates_and_dead_letters_the_rest(
    kafka_bootstrap, make_topic, client, backend, tmp_path, request
):
    topic = make_topic("updates", partitions=3)
    to, table, read = target(backend, tmp_path, request)
    stream = update_stream(n_docs=80, rounds=4, seed=5)
    half = len(stream) // 2
    produce_updates(kafka_bootstrap, topic, stream[:half])
    # An aborted transaction: a read_committed reader never sees it.
    aborted = [(i, g + 10_000, v) for i, g, v in stream[:20]]
    produce_updates(kafka_bootstrap, topic, aborted, transactional=f"tx-{topic}", abort=True)
    produce_updates(kafka_bootstrap, topic, stream[half:], transactional=f"tx2-{topic}")
    bad = ck.Producer({"bootstrap.servers": kafka_bootstrap})
    bad.produce(topic, b"{not json", b"doc-1")
    bad.produce(
        topic,
        orjson.dumps({"id": "doc-2", "embedding": [1.0] * (DIM + 1), "generation": 1}),
        b"doc-2",
    )
    bad.flush(30)
    config = config_file(
        tmp_path / "c.yaml", kafka_bootstrap, client, topic, to, table, batch_records=50
    )
    log = tmp_path / "sink.log"
    proc = start_sink(config, log)
    try:
        got = wait_for(read, compacted(stream), proc, log)
    finally:
        code = proc.wait(timeout=60) if proc.send_signal(signal.SIGTERM) is None else None
    assert code == 0, log.read_text()[-3000:]
    want = compacted(stream)
    for doc_id, (generation, vector) in want.items():
        assert got[doc_id][0] == generation
        assert (got[doc_id][1] == vector).all()
    dead = read_dead_letters(kafka_bootstrap, f"{topic}-sink-dead-letters", 2)
    assert sorted(d["reason"] for d in dead) == ["invalid_json", "wrong_dimension"]


def read_dead_letters(bootstrap: str, topic: str, n: int, timeout: float = 30.0) -> list[dict]:
    consumer = ck.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"r-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        m = consumer.poll(0.5)
        if m is not None and m.error() is None:
            out.append(orjson.loads(m.value()))
    consumer.close()
    return out


KAFKA_CRASH_POINTS = {
    "postgresql": ("sink:write:2", "postgres:commit:2", "sink:written:3"),
    "lancedb": ("lancedb:rows:2", "lancedb:marks:2", "sink:written:3"),
}


@pytest.mark.parametrize("backend", ["postgresql", "lancedb"])
def test_a_sink_killed_mid_batch_resumes_from_the_backends_offsets(
    kafka_bootstrap, make_topic, client, backend, tmp_path, request
):
    topic = make_topic("updates", partitions=2)
    to, table, read = target(backend, tmp_path, request)
    # Two rounds: half the documents' last update is early, where the kills land.
    stream = update_stream(n_docs=150, rounds=2, seed=7)
    produce_updates(kafka_bootstrap, topic, stream)
    config = config_file(
        tmp_path / "c.yaml", kafka_bootstrap, client, topic, to, table, batch_records=20
    )
    log = tmp_path / "sink.log"
    for point in KAFKA_CRASH_POINTS[backend]:
        proc = start_sink(config, log, STREAM_NUDGE_CRASH_AT=point)
        assert proc.wait(timeout=90) == -signal.SIGKILL, log.read_text()[-3000:]
    proc = start_sink(config, log)
    try:
        wait_for(read, compacted(stream), proc, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    starts = [line for line in log.read_text().splitlines() if "from offsets" in line]
    # Every restart resumed past what the killed run had committed, none from the start.
    assert len(starts) == 4 and "{0: 0, 1: 0}" in starts[0] and "{0: 0, 1: 0}" not in starts[-1]


def test_a_database_that_goes_away_is_waited_for_and_nothing_is_skipped(
    kafka_bootstrap, make_topic, tmp_path
):
    """A server of its own, stopped (its data kept) while the sink runs and updates keep coming,
    then started again: the sink retries with backoff and ends with every update."""
    import shutil
    import socket
    import tempfile

    from conftest import POSTGRES_SCRIPT

    run_dir = tempfile.mkdtemp(prefix="stream-nudge-pg-outage-")
    os.chmod(run_dir, 0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ, PG_PORT=str(port), PG_RUN_DIR=run_dir, PG_KEEP_DATA="1", PYTHON=sys.executable
    )

    def server(action: str) -> str:
        done = subprocess.run(
            [str(POSTGRES_SCRIPT), action], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    dsn = server("start")
    topic = make_topic("updates", partitions=1)
    table = f"t_{uuid.uuid4().hex[:10]}"
    stream = update_stream(n_docs=60, rounds=4, seed=11)
    half = len(stream) // 2
    config = config_file(
        tmp_path / "c.yaml", kafka_bootstrap, "confluent-kafka", topic, dsn, table, batch_records=10
    )
    log = tmp_path / "sink.log"
    proc = start_sink(config, log)
    try:
        produce_updates(kafka_bootstrap, topic, stream[:half])
        wait_for(lambda: pg_content(dsn, table), compacted(stream[:half]), proc, log)
        server("stop")
        produce_updates(kafka_bootstrap, topic, stream[half:])
        deadline = time.monotonic() + 30
        while "retrying" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "BackendUnavailable" in log.read_text()
        assert proc.poll() is None  # waiting, not stopped
        server("start")
        wait_for(lambda: pg_content(dsn, table), compacted(stream), proc, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        env.pop("PG_KEEP_DATA")
        server("stop")
        shutil.rmtree(run_dir, ignore_errors=True)
    assert code == 0


def test_partitions_added_to_the_updates_topic_are_read_too(
    kafka_bootstrap, make_topic, kafka_admin, postgres_dsn, tmp_path
):
    from kafka.admin import NewPartitions

    topic = make_topic("updates", partitions=1)
    table = f"t_{uuid.uuid4().hex[:10]}"
    stream = update_stream(n_docs=40, rounds=2, seed=13)
    half = len(stream) // 2
    config = config_file(
        tmp_path / "c.yaml", kafka_bootstrap, "confluent-kafka", topic, postgres_dsn, table
    )
    log = tmp_path / "sink.log"
    proc = start_sink(config, log)
    try:
        produce_updates(kafka_bootstrap, topic, stream[:half])
        wait_for(lambda: pg_content(postgres_dsn, table), compacted(stream[:half]), proc, log)
        kafka_admin.create_partitions({topic: NewPartitions(total_count=3)})
        time.sleep(1.0)  # the producer's metadata sees the new partitions
        produce_updates(kafka_bootstrap, topic, stream[half:])
        wait_for(lambda: pg_content(postgres_dsn, table), compacted(stream), proc, log, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert "3 partitions now" in log.read_text()
