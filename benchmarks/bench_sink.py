"""``stream-nudge sink`` into PostgreSQL + pgvector and LanceDB: throughput and latency.

    python benchmarks/bench_sink.py                 # starts PostgreSQL and a Kafka broker itself
    python benchmarks/bench_sink.py --only throughput --rows 20000

throughput: --rows updates of distinct documents (d = --dim, JSON vectors, as `run` publishes
them) in an updates file go through the sink (`SinkService` from the file: decode, one batch per
--batch records, each one transaction with its offsets) into a fresh table; next to it, in the same
run, the same rows already decoded written by a bare COPY (binary) into a table of the same
columns, one transaction per batch (PostgreSQL), or by a bare `merge_insert` by id of each batch
(LanceDB). PostgreSQL is measured with the HNSW index (what a search needs, and what a bare COPY
into a searchable table also pays) and without it (the sink's own cost). Best of --repeat rounds,
alternating sink and baseline.

latency: a transactional producer writes updates to the updates topic at --rate updates/s (one
transaction every 100 ms) for --seconds; the sink runs as its own process (`stream-nudge sink`);
a poller reads the highest generation the table holds every 10 ms. An update's latency is the time
from its transaction's commit to the first poll that sees its generation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_kafka import free_port, start_broker  # noqa: E402

from stream_nudge.backends.sink import SinkService  # noqa: E402
from stream_nudge.config import load_config  # noqa: E402
from stream_nudge.messages import encode_update  # noqa: E402


def start_postgres() -> tuple[str, dict]:
    run_dir = tempfile.mkdtemp(prefix="bench-pg-")
    os.chmod(run_dir, 0o755)
    env = dict(os.environ, PG_PORT=str(free_port()), PG_RUN_DIR=run_dir, PYTHON=sys.executable)
    done = subprocess.run(
        [str(REPO / "deploy/postgres/postgres.sh"), "start"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip().splitlines()[-1], env


def stop_postgres(env: dict) -> None:
    subprocess.run(
        [str(REPO / "deploy/postgres/postgres.sh"), "stop"], env=env, capture_output=True
    )
    shutil.rmtree(env["PG_RUN_DIR"], ignore_errors=True)


def make_rows(n: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"doc-{i}" for i in range(n)]
    return ids, vectors


def write_updates(path: Path, ids, vectors) -> Path:
    with path.open("wb") as f:
        for g, (doc_id, v) in enumerate(zip(ids, vectors, strict=True), start=1):
            f.write(encode_update(doc_id, v, "nudge-n", 0.1, g, "cosine") + b"\n")
    return path


# --- PostgreSQL -----------------------------------------------------------------------------


def pg_table(dsn: str, name: str, dim: int, index: bool) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(
            f"CREATE TABLE {name} (id text PRIMARY KEY, embedding vector({dim}) NOT NULL, "
            "generation bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"
        )
        if index:
            conn.execute(f"CREATE INDEX ON {name} USING hnsw (embedding vector_cosine_ops)")


def pg_bare_copy(dsn: str, name: str, ids, vectors, batch: int) -> float:
    import psycopg
    from pgvector.psycopg import register_vector

    with psycopg.connect(dsn) as conn:
        register_vector(conn)
        started = time.perf_counter()
        for lo in range(0, len(ids), batch):
            with (
                conn.cursor() as cur,
                cur.copy(
                    f"COPY {name} (id, embedding, generation) FROM STDIN WITH (FORMAT BINARY)"
                ) as copy,
            ):
                copy.set_types(["text", "vector", "int8"])
                for i in range(lo, min(lo + batch, len(ids))):
                    copy.write_row((ids[i], vectors[i], i + 1))
            conn.commit()
        return time.perf_counter() - started


def read_decoded(updates: Path, lo: int, hi: int):
    """Lines lo..hi of an updates file, decoded the plain way (orjson, numpy)."""
    import orjson

    ids, vectors, generations = [], [], []
    with updates.open("rb") as f:
        for n, line in enumerate(f):
            if n < lo:
                continue
            if n >= hi:
                break
            obj = orjson.loads(line)
            ids.append(obj["id"])
            vectors.append(np.asarray(obj["embedding"], dtype=np.float32))
            generations.append(obj["generation"])
    return ids, vectors, generations


def pg_read_decode_copy(dsn: str, name: str, updates: Path, rows: int, batch: int) -> float:
    """A user's plain loop: read the updates file, decode each line, COPY each batch."""
    import orjson
    import psycopg
    from pgvector.psycopg import register_vector

    with psycopg.connect(dsn) as conn, updates.open("rb") as f:
        register_vector(conn)
        started = time.perf_counter()
        done = 0
        while done < rows:
            with (
                conn.cursor() as cur,
                cur.copy(
                    f"COPY {name} (id, embedding, generation) FROM STDIN WITH (FORMAT BINARY)"
                ) as copy,
            ):
                copy.set_types(["text", "vector", "int8"])
                for _ in range(min(batch, rows - done)):
                    obj = orjson.loads(f.readline())
                    vector = np.asarray(obj["embedding"], dtype=np.float32)
                    copy.write_row((obj["id"], vector, obj["generation"]))
                    done += 1
            conn.commit()
        return time.perf_counter() - started


def run_sink_file(to: str, table: str, updates: Path, batch: int, create: bool = False) -> float:
    config = load_config(
        overrides={
            "sink": {
                "to": to,
                "table": table,
                "batch_records": batch,
                "metrics_port": 0,
                "create": create,
            },
            "kafka": {"max_poll_records": batch},
            "logging": {"level": "WARNING"},
        }
    )
    started = time.perf_counter()
    code = SinkService(config, str(updates), str(updates) + ".dead").run()
    seconds = time.perf_counter() - started
    assert code == 0
    return seconds


def pg_count(dsn: str, name: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]


def throughput_postgres(
    dsn: str, rows: int, index_rows: int, dim: int, batch: int, repeat: int, work: Path
) -> dict:
    """Sink, read + decode + COPY, and COPY of decoded rows, alternating, into fresh tables:
    without an index (--rows), then with the HNSW index (--index-rows: an insert into it costs
    milliseconds)."""
    out = {}
    for index, n in ((False, rows), (True, index_rows)):
        ids, vectors = make_rows(n, dim)
        updates = write_updates(work / f"updates-{n}.jsonl", ids, vectors)
        best = {"sink": float("inf"), "read_decode_copy": float("inf"), "copy": float("inf")}
        for r in range(repeat):
            order = list(best) if r % 2 == 0 else list(reversed(best))
            for what in order:
                table = f"t_{uuid.uuid4().hex[:8]}"
                pg_table(dsn, table, dim, index)
                if what == "sink":
                    seconds = run_sink_file(dsn, table, updates, batch)
                elif what == "read_decode_copy":
                    seconds = pg_read_decode_copy(dsn, table, updates, n, batch)
                else:
                    seconds = pg_bare_copy(dsn, table, ids, vectors, batch)
                assert pg_count(dsn, table) == n
                best[what] = min(best[what], seconds)
                print(
                    f"  postgres index={index} round {r} {what}: {n / seconds:,.0f} rows/s",
                    flush=True,
                )
        key = "with_hnsw" if index else "no_index"
        out[key] = {
            "rows": n,
            **{f"{k}_rows_per_s": n / v for k, v in best.items()},
            "ratio_to_read_decode_copy": best["read_decode_copy"] / best["sink"],
            "ratio_to_copy": best["copy"] / best["sink"],
        }
        print(
            f"postgres {key} ({n:,} rows): sink {n / best['sink']:,.0f} rows/s; read + decode + "
            f"COPY {n / best['read_decode_copy']:,.0f} -> {out[key]['ratio_to_read_decode_copy']:.2f}x; "
            f"COPY of decoded rows {n / best['copy']:,.0f} -> {out[key]['ratio_to_copy']:.2f}x",
            flush=True,
        )
    return out


# --- LanceDB --------------------------------------------------------------------------------


def lance_bare_merge(path: Path, ids, vectors, batch: int) -> float:
    import lancedb
    import pyarrow as pa

    dim = vectors.shape[1]
    schema = pa.schema(
        [
            pa.field("id", pa.string(), False),
            pa.field("vector", pa.list_(pa.float32(), dim)),
            ("generation", pa.int64()),
            ("updated_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    table = lancedb.connect(str(path)).create_table("bare", schema=schema)
    started = time.perf_counter()
    for lo in range(0, len(ids), batch):
        hi = min(lo + batch, len(ids))
        data = pa.table(
            {
                "id": pa.array(ids[lo:hi], pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors[lo:hi].ravel()), dim),
                "generation": pa.array(np.arange(lo + 1, hi + 1), pa.int64()),
                "updated_at": pa.array(
                    np.full(hi - lo, time.time_ns() // 1000), pa.timestamp("us", tz="UTC")
                ),
            },
            schema=schema,
        )
        table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(
            data
        )
    seconds = time.perf_counter() - started
    assert table.count_rows() == len(ids)
    return seconds


def throughput_lancedb(rows: int, dim: int, batch: int, repeat: int, work: Path) -> dict:
    """Sink, read + decode + merge_insert, and merge_insert of decoded rows, alternating."""
    import lancedb

    ids, vectors = make_rows(rows, dim)
    updates = write_updates(work / "updates.jsonl", ids, vectors)
    best = {"sink": float("inf"), "read_decode_merge": float("inf"), "merge": float("inf")}
    for r in range(repeat):
        order = list(best) if r % 2 == 0 else list(reversed(best))
        for what in order:
            path = work / f"lance-{what}-{r}"
            if what == "sink":
                seconds = run_sink_file(
                    f"lancedb://{path}?table=sink", "sink", updates, batch, create=True
                )
                assert lancedb.connect(str(path)).open_table("sink").count_rows() == rows
            elif what == "read_decode_merge":
                started = time.perf_counter()
                decoded = read_decoded(updates, 0, rows)
                lance_bare_merge(path, decoded[0], np.stack(decoded[1]), batch)
                seconds = time.perf_counter() - started
            else:
                seconds = lance_bare_merge(path, ids, vectors, batch)
            best[what] = min(best[what], seconds)
            print(f"  lancedb round {r} {what}: {rows / seconds:,.0f} rows/s", flush=True)
            shutil.rmtree(path, ignore_errors=True)
    out = {
        "rows": rows,
        **{f"{k}_rows_per_s": rows / v for k, v in best.items()},
        "ratio_to_read_decode_merge": best["read_decode_merge"] / best["sink"],
        "ratio_to_merge": best["merge"] / best["sink"],
    }
    print(
        f"lancedb ({rows:,} rows): sink {rows / best['sink']:,.0f} rows/s; read + decode + "
        f"merge_insert {rows / best['read_decode_merge']:,.0f} -> "
        f"{out['ratio_to_read_decode_merge']:.2f}x; merge_insert of decoded rows "
        f"{rows / best['merge']:,.0f} -> {out['ratio_to_merge']:.2f}x",
        flush=True,
    )
    return out


# --- latency ----------------------------------------------------------------------------------


class Poller(threading.Thread):
    """The highest generation the backend holds, every ``every`` s: when each became visible."""

    def __init__(self, read_max, every: float = 0.01):
        super().__init__(daemon=True)
        self.read_max, self.every = read_max, every
        self.seen: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                value = self.read_max()
            except Exception:
                value = None
            if value is not None and (not self.seen or value > self.seen[-1][1]):
                self.seen.append((time.monotonic(), value))
            time.sleep(self.every)

    def visible_at(self, generation: int) -> float | None:
        for t, g in self.seen:
            if g >= generation:
                return t
        return None


def latency(
    backend: str,
    to: str,
    bootstrap: str,
    rate: int,
    seconds: float,
    dim: int,
    work: Path,
    index: bool = True,
) -> dict:
    import confluent_kafka as ck
    import confluent_kafka.admin
    import yaml

    topic = f"updates-{uuid.uuid4().hex[:8]}"
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([confluent_kafka.admin.NewTopic(topic, 3, 1)])[topic].result(30)
    table = f"lat_{uuid.uuid4().hex[:8]}"
    config = work / f"sink-{backend}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": {
                    "bootstrap_servers": bootstrap,
                    "topics": {"updates": topic},
                    "poll_timeout_ms": 100,
                },
                "sink": {
                    "to": to,
                    "table": table,
                    "create": True,
                    "index": index,
                    "metrics_port": 0,
                },
                "logging": {"level": "WARNING"},
            }
        )
    )
    env = dict(os.environ)
    env.pop("STREAM_NUDGE_KAFKA_BOOTSTRAP", None)
    log = work / f"sink-{backend}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream_nudge", "sink", "--config", str(config)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    if backend == "lancedb":
        import lancedb

        path = to[len("lancedb://") :].partition("?")[0]

        def read_max():
            t = lancedb.connect(path).open_table(table)
            data = t.to_arrow().column("generation")
            return max(data.to_pylist(), default=None)
    else:
        import psycopg

        conn = psycopg.connect(to, autocommit=True)

        def read_max():
            exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]
            if not exists:
                return None
            return conn.execute(f"SELECT max(generation) FROM {table}").fetchone()[0]

    poller = Poller(read_max)
    poller.start()
    producer = ck.Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": f"bench-{topic}", "linger.ms": 5}
    )
    producer.init_transactions(30)
    rng = np.random.default_rng(1)
    docs = 5000
    vectors = rng.standard_normal((docs, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    per_tx = max(1, rate // 10)
    generation = 0
    committed: list[tuple[int, float]] = []  # (last generation of a transaction, commit time)
    # Warm-up: the table is created and the index built on the first updates, not timed.
    started = time.monotonic()
    end = started + seconds + 3.0
    next_at = started
    while time.monotonic() < end:
        producer.begin_transaction()
        for _ in range(per_tx):
            generation += 1
            i = int(rng.integers(docs))
            value = encode_update(f"doc-{i}", vectors[i], "nudge-n", 0.1, generation, "cosine")
            producer.produce(
                topic,
                value,
                f"doc-{i}".encode(),
                headers=[("generation", str(generation).encode())],
            )
        producer.commit_transaction(30)
        committed.append((generation, time.monotonic()))
        next_at += 0.1
        time.sleep(max(0.0, next_at - time.monotonic()))
    deadline = time.monotonic() + 30
    while poller.visible_at(generation) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    poller.stop.set()
    proc.send_signal(15)
    proc.wait(timeout=60)
    timed = [(g, t) for g, t in committed if t - started >= 3.0]
    # Every update of a transaction became visible no later than its last one.
    latencies = []
    previous = timed[0][0] - per_tx if timed else 0
    for g, t in timed:
        seen = poller.visible_at(g)
        if seen is None:
            raise RuntimeError(f"generation {g} never became visible; see {log}")
        latencies.extend([seen - t] * (g - previous))
        previous = g
    ms = np.array(latencies) * 1000.0
    result = {
        "updates": len(latencies),
        "rate": rate,
        "index": index,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }
    print(
        f"latency {backend} (index {index}): {result['updates']:,} updates at {rate}/s: p50 {result['p50_ms']:.0f} ms, "
        f"p99 {result['p99_ms']:.0f} ms, max {result['max_ms']:.0f} ms",
        flush=True,
    )
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["throughput", "latency"])
    p.add_argument("--backend", choices=["postgresql", "lancedb", "both"], default="both")
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--index-rows", type=int, default=5_000, help="rows into the HNSW-indexed table")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--rate", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--bootstrap", help="a running broker (default: start one)")
    p.add_argument(
        "--no-index", action="store_true", help="latency: the sink builds no vector index"
    )
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    backends = ["postgresql", "lancedb"] if a.backend == "both" else [a.backend]
    work = Path(tempfile.mkdtemp(prefix="bench-sink-"))
    dsn, pg_env = start_postgres() if "postgresql" in backends else (None, None)
    broker_env = None
    results: dict = {"rows": a.rows, "dim": a.dim, "batch": a.batch}
    try:
        if a.only in (None, "throughput"):
            if "postgresql" in backends:
                results["postgresql"] = throughput_postgres(
                    dsn, a.rows, a.index_rows, a.dim, a.batch, a.repeat, work
                )
            if "lancedb" in backends:
                results["lancedb"] = throughput_lancedb(a.rows, a.dim, a.batch, a.repeat, work)
        if a.only in (None, "latency"):
            bootstrap = a.bootstrap
            if bootstrap is None:
                bootstrap, broker_env = start_broker(work / "kafka")
            for backend in backends:
                to = dsn if backend == "postgresql" else f"lancedb://{work / 'lance-latency'}"
                results[f"latency_{backend}"] = latency(
                    backend, to, bootstrap, a.rate, a.seconds, a.dim, work, not a.no_index
                )
    finally:
        if pg_env is not None:
            stop_postgres(pg_env)
        if broker_env is not None:
            subprocess.run(
                [str(REPO / "deploy/kafka/kafka.sh"), "stop"], env=broker_env, capture_output=True
            )
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
