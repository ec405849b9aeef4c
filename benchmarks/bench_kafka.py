"""The Kafka pipeline's throughput and latency, through a real broker.

    python benchmarks/bench_kafka.py                      # starts a broker with deploy/kafka/kafka.sh
    python benchmarks/bench_kafka.py --bootstrap HOST:PORT

throughput: untimed, the documents and --warm-events clicks go through the pipeline and gamma is
selected, so that it is non-zero; then --events clicks pre-filled in the events topic go through the
service's pipeline (KafkaSource -> engine -> KafkaSink), the clock stopping when the last update is
committed (--guarantee exactly_once, the default: transactions every second with the changelog
records and the offsets, as the service commits) or acknowledged (at_least_once, no commits). Next to it, in the same run, a bare consume loop of the same client library over the
same records, and one that also decodes each message (orjson.loads + float32 array). --client
chooses the pipeline's client (both by default, one after the other). The final selection at the
end of input is timed apart.

latency: with gamma already non-zero, a producer offers training clicks at --rate events/s; a
reader of the updates topic matches each update of document X to the clicks on X sent before it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from stream_nudge.config import load_config  # noqa: E402
from stream_nudge.engine import Engine  # noqa: E402
from stream_nudge.engine.changelog import ChangelogWriter  # noqa: E402
from stream_nudge.kafka import (  # noqa: E402
    KafkaSink,
    KafkaSource,
    TransactionalCommitter,
    ensure_changelog,
    ensure_topics,
)
from stream_nudge.kafka.common import make_producer  # noqa: E402
from stream_nudge.loop import run  # noqa: E402

NUMPY = orjson.OPT_SERIALIZE_NUMPY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(run_dir: Path) -> tuple[str, dict]:
    env = dict(
        os.environ,
        KAFKA_PORT=str(free_port()),
        KAFKA_CONTROLLER_PORT=str(free_port()),
        KAFKA_RUN_DIR=str(run_dir),
        PYTHON=sys.executable,
    )
    subprocess.run(
        [str(REPO / "deploy/kafka/kafka.sh"), "start"], env=env, check=True, capture_output=True
    )
    return f"127.0.0.1:{env['KAFKA_PORT']}", env


def new_topics(bootstrap, prefix=""):
    """Fresh input topics (docs: 1 partition, events: 3) and the names of the output ones."""
    tag = uuid.uuid4().hex[:8]
    topics = {
        name: f"{prefix}{short}-{tag}"
        for name, short in (
            ("docs", "docs"),
            ("events", "events"),
            ("updates", "updates"),
            ("dead_letters", "dead"),
        )
    }
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topics["docs"], 1, 1), NewTopic(topics["events"], 3, 1)])
    admin.close()
    return tag, topics


def fill(bootstrap, topic, messages, keys=None):
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        batch_size=1 << 20,
        max_request_size=10 << 20,
    )
    for i, m in enumerate(messages):
        producer.send(topic, value=m, key=None if keys is None else keys[i])
    producer.flush()
    producer.close()


def decode_vector(value: bytes) -> np.ndarray:
    """The bare decode: orjson.loads plus the float32 array, from a JSON list or base64."""
    obj = orjson.loads(value)
    if "query_embedding" in obj:
        return np.array(obj["query_embedding"], dtype=np.float32)
    return np.frombuffer(base64.b64decode(obj["query_embedding_b64"]), dtype="<f4").copy()


def consume_all(
    bootstrap, topic, n, decode=False, start=None, client="kafka-python"
) -> tuple[float, float]:
    """Seconds (wall, and CPU of this process) for a bare loop of ``client`` (the library
    itself, not our seam) to read ``n`` records of ``topic`` from ``start``."""
    if client == "confluent-kafka":
        return _confluent_consume_all(bootstrap, topic, n, decode, start)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=10 << 20,
        fetch_max_bytes=50 << 20,
    )
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(parts)
    for tp in parts:
        consumer.seek(tp, (start or {}).get(tp.partition, 0))
    seen = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while seen < n:
        for records in consumer.poll(timeout_ms=1000, max_records=1000).values():
            seen += len(records)
            if decode:
                for r in records:
                    decode_vector(r.value)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    consumer.close()
    return elapsed, cpu


def _confluent_consume_all(bootstrap, topic, n, decode, start) -> tuple[float, float]:
    import confluent_kafka as ck

    consumer = ck.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bare-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 50 << 20,
            "max.partition.fetch.bytes": 10 << 20,
        }
    )
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.assign(
        [ck.TopicPartition(topic, p, (start or {}).get(p, 0)) for p in sorted(partitions)]
    )
    seen = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while seen < n:
        for m in consumer.consume(1000, 1.0):
            if m.error() is None:
                seen += 1
                if decode:
                    decode_vector(m.value())
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    consumer.close()
    return elapsed, cpu


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def end_offsets(bootstrap, topic) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    out = {tp.partition: o for tp, o in consumer.end_offsets(parts).items()}
    consumer.close()
    return out


def make_messages(n_docs, n_events, dim, seed=0, vectors="json"):
    rng = np.random.default_rng(seed)
    # Documents in topics of 25 (near neighbours to confuse), as in the demo.
    centres = rng.normal(size=(max(1, n_docs // 25), dim))
    docs = (
        centres[np.arange(n_docs) % len(centres)] + 0.2 * rng.normal(size=(n_docs, dim))
    ).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    doc_msgs = [
        orjson.dumps({"id": f"doc-{i}", "embedding": docs[i]}, option=NUMPY) for i in range(n_docs)
    ]
    popularity = 1.0 / np.arange(1, n_docs + 1) ** 0.8
    popularity /= popularity.sum()
    targets = rng.choice(n_docs, size=n_events, p=popularity)
    # Queries are a distortion of their document (a domain shift) plus noise: nudging has work to do.
    warp = np.eye(dim) + rng.normal(size=(dim, dim)) / np.sqrt(dim)
    queries = (
        docs[targets] @ warp.T + rng.normal(scale=1.5 / np.sqrt(dim), size=(n_events, dim))
    ).astype(np.float32)
    if vectors == "json":
        field, payload = "query_embedding", list(queries)
    else:
        field = "query_embedding_b64"
        payload = [base64.b64encode(q.astype("<f4").tobytes()).decode() for q in queries]
    event_msgs = [
        orjson.dumps(
            {"query_id": f"q-{i}", field: payload[i], "doc_id": f"doc-{targets[i]}"},
            option=NUMPY,
        )
        for i in range(n_events)
    ]
    return doc_msgs, event_msgs, docs, warp


def throughput(
    bootstrap,
    n_docs,
    n_events,
    dim,
    warm_events,
    vectors="json",
    broker_pid=None,
    repeat=3,
    client="confluent-kafka",
    guarantee="exactly_once",
    commit_ms=None,
):
    tag, topics = new_topics(bootstrap, "")
    total = warm_events + repeat * n_events
    doc_msgs, event_msgs, _, _ = make_messages(n_docs, total, dim, vectors=vectors)
    fill(bootstrap, topics["docs"], doc_msgs)
    fill(bootstrap, topics["events"], event_msgs[:warm_events])
    config = load_config(
        overrides={
            "kafka": {
                "client": client,
                "bootstrap_servers": bootstrap,
                "topics": topics,
                "group_id": f"bench-{tag}",
                "partitions": 3,
            },
            "gamma": {"every_events": 0, "every_seconds": 0},
            # Updates go out in the encoding the events came in.
            "publish": {"encoding": vectors},
            **({"processing": {"commit_interval_ms": commit_ms}} if commit_ms else {}),
        }
    )
    ensure_topics(config)
    # Untimed: the documents, then warm-up clicks and a selection, so that gamma is non-zero and
    # every timed click's document is republished (the steady state of a live service).
    engine = Engine(config)
    source = KafkaSource(config)
    committer = None
    if guarantee == "exactly_once":
        producer = make_producer(config, transactional_id=f"bench-{tag}-txn")
        sink = KafkaSink(config, producer)
        committer = TransactionalCommitter(
            producer,
            source,
            ChangelogWriter(engine, fresh=True),
            ensure_changelog(config),
            config.processing.commit_interval_ms / 1000.0,
            config.processing.commit_records,
            config.processing.caught_up_commit_ms / 1000.0,
        )
    else:
        sink = KafkaSink(config)

    def counted(batch):
        if committer is not None:
            committer.count(len(batch), len(batch) < batch_size)

    def settle():
        """Everything written committed (exactly once) or acknowledged."""
        if committer is not None:
            committer.commit()
        else:
            sink.flush()

    batch_size = config.kafka.max_poll_records
    run(
        engine,
        source,
        sink,
        batch_size,
        committer=committer,
        on_batch=counted,
        stop=lambda: (
            engine.docs is not None and len(engine.docs) >= n_docs and engine.events >= warm_events
        ),
    )
    sink.write(engine.reselect())
    settle()
    warm_gamma = engine.gamma
    # CPU of each process of the pipeline over the timed part: on 2 cores, the ratio to the bare
    # loop cannot exceed 2 x (its CPU per event) / (the pipeline's CPU per event).
    pids = {"engine": os.getpid()}  # the Kafka clients run in it
    if broker_pid is not None:
        pids["broker"] = broker_pid
    # Rounds: each adds the next n_events clicks to the topic, then times the bare loop, the loop
    # that also decodes, and the pipeline over them. The machine is shared and the broker's
    # timing varies: the best time of each over the rounds is compared.
    rounds = []
    for r in range(repeat):
        start = end_offsets(bootstrap, topics["events"])
        fill(bootstrap, topics["events"], event_msgs[warm_events + r * n_events :][:n_events])
        bare, bare_cpu = consume_all(
            bootstrap, topics["events"], n_events, start=start, client=client
        )
        decoded, _ = consume_all(
            bootstrap, topics["events"], n_events, decode=True, start=start, client=client
        )
        sent = sink.updates_sent
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        t0 = time.perf_counter()
        target = warm_events + (r + 1) * n_events
        run(
            engine,
            source,
            sink,
            batch_size,
            committer=committer,
            on_batch=counted,
            stop=lambda t=target: engine.events >= t,
        )
        settle()  # the clock stops when the last update is committed (or acknowledged)
        mine = time.perf_counter() - t0
        cpu = {name: 1e6 * (cpu_seconds(pid) - cpu0[name]) / n_events for name, pid in pids.items()}
        rounds.append(
            {
                "pipeline_s": mine,
                "bare_s": bare,
                "decode_s": decoded,
                "updates": sink.updates_sent - sent,
                "cpu_us_per_event": cpu,
                "bare_cpu_us_per_event": 1e6 * bare_cpu / n_events,
            }
        )
        print(
            f"  round {r + 1}: pipeline {n_events / mine:,.0f}/s, bare {n_events / bare:,.0f}/s, "
            f"decode {n_events / decoded:,.0f}/s"
        )
    t0 = time.perf_counter()
    sink.write(engine.finish())
    settle()
    final = time.perf_counter() - t0
    source.close()
    sink.close()
    best = min(rounds, key=lambda x: x["pipeline_s"])
    mine = best["pipeline_s"]
    bare = min(x["bare_s"] for x in rounds)
    decoded = min(x["decode_s"] for x in rounds)
    out = {
        "client": client,
        "guarantee": guarantee,
        "commits": committer.commits if committer is not None else 0,
        "vectors": vectors,
        "events": n_events,
        "rounds": rounds,
        "warm_gamma": warm_gamma,
        "updates_published": best["updates"],
        "pipeline_events_per_s": n_events / mine,
        "bare_consume_events_per_s": n_events / bare,
        "consume_and_decode_events_per_s": n_events / decoded,
        "ratio_to_bare": bare / mine,
        "ratio_to_decode": decoded / mine,
        "final_selection_s": final,
        "cpu_us_per_event": best["cpu_us_per_event"],
        "bare_cpu_us_per_event": min(x["bare_cpu_us_per_event"] for x in rounds),
    }
    per = ", ".join(f"{name} {us:.0f}" for name, us in out["cpu_us_per_event"].items())
    print(
        f"throughput ({client}, {guarantee}, commits every {config.processing.commit_interval_ms} "
        f"ms, {vectors} vectors, best of {repeat}): pipeline "
        f"{out['pipeline_events_per_s']:,.0f} events/s ({best['updates']:,} updates published, "
        f"gamma {warm_gamma:.4f}); bare consume {out['bare_consume_events_per_s']:,.0f}/s -> "
        f"{out['ratio_to_bare']:.2f}x; consume+decode "
        f"{out['consume_and_decode_events_per_s']:,.0f}/s -> {out['ratio_to_decode']:.2f}x "
        f"(final selection {final:.2f} s)\n  CPU us/event: {per} (total "
        f"{sum(out['cpu_us_per_event'].values()):.0f}); bare consume loop "
        f"{out['bare_cpu_us_per_event']:.0f}"
    )
    return out


def latency(bootstrap, n_docs, dim, rate, seconds, guarantee="exactly_once", commit_ms=None):
    """The real service (``stream-nudge run`` in its own process) under an offered load."""
    import tempfile

    import yaml

    tag, topics = new_topics(bootstrap, "l")
    doc_msgs, warm_msgs, docs, warp = make_messages(n_docs, 4000, dim, seed=1)
    fill(bootstrap, topics["docs"], doc_msgs)
    fill(bootstrap, topics["events"], warm_msgs)  # warm-up clicks: gamma becomes non-zero
    folder = Path(tempfile.mkdtemp())
    config = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topics": topics,
            "group_id": f"lat-{tag}",
            "partitions": 3,
            "linger_ms": 0,
            "poll_timeout_ms": 50,
            "max_poll_records": 200,
        },
        "gamma": {"every_events": 0, "every_seconds": 0},
        "validation": {"fraction": 0.3},
        "checkpoint": {"directory": str(folder / "state"), "every_seconds": 60},
        "processing": {
            "guarantee": guarantee,
            **({"commit_interval_ms": commit_ms} if commit_ms else {}),
        },
        "metrics": {"port": 0},
        "service": {"idle_select_seconds": 1.0},
    }
    (folder / "c.yaml").write_text(yaml.safe_dump(config))
    service = subprocess.Popen(
        [sys.executable, "-m", "stream_nudge", "run", "--config", str(folder / "c.yaml")],
        stdout=(folder / "log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        # Wait for the warm-up's selection: the first updates appear.
        probe = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        deadline = time.time() + 300
        while time.time() < deadline:
            parts = probe.partitions_for_topic(topics["updates"]) or set()
            tps = [TopicPartition(topics["updates"], p) for p in parts]
            if tps and sum(probe.end_offsets(tps).values()) > 0:
                break
            time.sleep(0.5)
        probe.close()
        time.sleep(2.0)

        sent: dict[str, list[float]] = {}
        latencies: list[float] = []
        lock = threading.Lock()
        stop = threading.Event()

        def reader():
            consumer = KafkaConsumer(
                topics["updates"],
                bootstrap_servers=bootstrap,
                group_id=None,
                auto_offset_reset="latest",
                enable_auto_commit=False,
                fetch_max_wait_ms=10,
                # Committed updates: what a backend's reader of exactly-once output sees.
                isolation_level="read_committed",
            )
            consumer.poll(timeout_ms=1000)  # join at the end of the topic before clicks start
            ready.set()
            while not stop.is_set():
                for records in consumer.poll(timeout_ms=50).values():
                    now = time.time()
                    for r in records:
                        with lock:
                            waiting = sent.pop(r.key.decode(), [])
                        latencies.extend(now - t for t in waiting)
            consumer.close()

        ready = threading.Event()
        thread = threading.Thread(target=reader)
        thread.start()
        ready.wait(30)
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
        rng = np.random.default_rng(2)
        targets = rng.integers(0, n_docs, size=int(rate * seconds) + 1)
        noise = rng.normal(scale=1.5 / np.sqrt(dim), size=(len(targets), dim))
        bodies = [
            orjson.dumps(
                {
                    "query_id": f"live-{n}",
                    "query_embedding": (warp @ docs[t] + noise[n]).astype(np.float32),
                    "doc_id": f"doc-{t}",
                    "split": "train",
                },
                option=NUMPY,
            )
            for n, t in enumerate(targets)
        ]
        start = time.time()
        for n, body in enumerate(bodies):
            with lock:
                sent.setdefault(f"doc-{targets[n]}", []).append(time.time())
            producer.send(topics["events"], value=body)
            delay = start + (n + 1) / rate - time.time()
            if delay > 0:
                time.sleep(delay)
        offered = len(bodies) / (time.time() - start)
        producer.flush()
        producer.close()
        time.sleep(5.0)
        stop.set()
        thread.join()
    finally:
        service.send_signal(subprocess.signal.SIGTERM)
        service.wait(timeout=120)
    lat = np.array(latencies) * 1000
    out = {
        "rate": rate,
        "offered": offered,
        "seconds": seconds,
        "matched": len(lat),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }
    out["guarantee"] = guarantee
    out["commit_interval_ms"] = commit_ms
    print(
        f"latency ({guarantee}, commits every {commit_ms} ms) at {offered:,.0f} events/s offered: p50 {out['p50_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms "
        f"({out['matched']} clicks matched to updates)"
    )
    return out


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bootstrap")
    p.add_argument("--broker-pid", type=int, help="to count the broker's CPU with --bootstrap")
    p.add_argument("--docs", type=int, default=20_000)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3, help="throughput rounds (best of each kind)")
    p.add_argument("--warm-events", type=int, default=10_000, help="clicks before the timed part")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--rate", type=float, default=2000)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--latency-docs", type=int, default=2000, help="documents in the latency run")
    p.add_argument("--only", choices=["throughput", "latency"])
    p.add_argument(
        "--vectors",
        choices=["json", "base64", "both"],
        default="both",
        help="how the events' vectors (and so the updates') are encoded in the throughput run",
    )
    p.add_argument(
        "--client",
        choices=["confluent-kafka", "kafka-python", "both"],
        default="both",
        help="the pipeline's Kafka client, each against a bare loop of the same library",
    )
    p.add_argument(
        "--guarantee",
        choices=["exactly_once", "at_least_once", "both"],
        default="exactly_once",
        help="the pipeline's processing guarantee (the service's default: exactly_once)",
    )
    p.add_argument(
        "--commit-interval-ms",
        type=int,
        help="processing.commit_interval_ms (exactly_once; default: the service's)",
    )
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    env = None
    bootstrap = a.bootstrap
    broker_pid = a.broker_pid
    if bootstrap is None:
        run_dir = Path(f"/tmp/bench-kafka-{os.getpid()}")
        bootstrap, env = start_broker(run_dir)
        broker_pid = int((run_dir / "kafka.pid").read_text())
    guarantees = ("exactly_once", "at_least_once") if a.guarantee == "both" else (a.guarantee,)
    try:
        results = {}
        if a.only in (None, "throughput"):
            clients = ("confluent-kafka", "kafka-python") if a.client == "both" else (a.client,)
            for guarantee in guarantees:
                for client in clients:
                    for vectors in ("json", "base64") if a.vectors == "both" else (a.vectors,):
                        results[f"throughput_{guarantee}_{client}_{vectors}"] = throughput(
                            bootstrap,
                            a.docs,
                            a.events,
                            a.dim,
                            a.warm_events,
                            vectors,
                            broker_pid,
                            a.repeat,
                            client,
                            guarantee,
                            a.commit_interval_ms,
                        )
        if a.only in (None, "latency"):
            for guarantee in guarantees:
                results[f"latency_{guarantee}"] = latency(
                    bootstrap,
                    a.latency_docs,
                    a.dim,
                    a.rate,
                    a.seconds,
                    guarantee,
                    a.commit_interval_ms,
                )
    finally:
        if env is not None:
            subprocess.run(
                [str(REPO / "deploy/kafka/kafka.sh"), "stop"], env=env, capture_output=True
            )
            shutil.rmtree(env["KAFKA_RUN_DIR"], ignore_errors=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
