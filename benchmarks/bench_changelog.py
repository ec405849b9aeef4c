"""What a commit costs the loop with the changelog, against writing the whole checkpoint.

    python benchmarks/bench_changelog.py                 # 1,000,000 docs x 384, 2% nudged
    python benchmarks/bench_changelog.py --docs 100000   # quicker

An engine holds ``--docs`` documents, ``--nudged`` of them with query sums. For each share of
changed documents (0.1%, 1%, 10%), clicks reach that many documents (not timed: that is the
batch's work), then the commit's part is timed: the changelog writer turning what changed into
records (``ChangelogWriter.records``: the encoding the loop does before handing the records to the
producer). The baseline, in the same run: one checkpoint of the same engine as every commit wrote
it before the changelog (``Engine.to_state`` and ``CheckpointStore.save``).

Restore (``--restore``), against reading the state's raw arrays from disk (``np.load`` of the
originals, sums, published vectors and clicks: the baseline): an engine rebuilt from the whole
state's records in memory (``engine_from_records`` alone); from the local cache (its read and
the rebuild: a normal restart with nothing in the changelog's tail); and, with ``--bootstrap``,
from the changelog topics alone (a wiped disk: ``read_changelog`` through the broker).

    python benchmarks/bench_changelog.py --restore --shares 0.01 --repeat 1 --bootstrap 127.0.0.1:19092

Not measured here: the producer's sends and the transaction's commit (the Kafka benchmark's).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream_nudge.checkpoint import CheckpointStore
from stream_nudge.config import load_config
from stream_nudge.engine import Engine
from stream_nudge.engine.changelog import ChangelogWriter, engine_from_records
from stream_nudge.kafka.cache import LocalCache
from stream_nudge.kafka.changelog import ensure_changelog, read_changelog, write_changelog
from stream_nudge.kafka.client import TopicPartition
from stream_nudge.kafka.common import make_producer
from stream_nudge.messages import Record


def build(n_docs: int, dim: int, nudged: float, seed: int = 0) -> Engine:
    rng = np.random.default_rng(seed)
    engine = Engine(load_config(overrides={"validation": {"fraction": 0.0}}))
    first = rng.normal(size=dim).astype(np.float32)
    engine.process([Record("docs", _doc("d0", first))])
    docs = engine.docs
    started = time.perf_counter()
    for start in range(1, n_docs, 100_000):
        block = rng.normal(size=(min(100_000, n_docs - start), dim)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        for i, vector in enumerate(block):
            docs.upsert(f"d{start + i}", vector)
        print(
            f"  {start + len(block):,} documents ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    click(engine, int(nudged * n_docs), rng)
    return engine


def click(engine: Engine, count: int, rng) -> None:
    """One training click on each of ``count`` random documents."""
    docs = engine.docs
    rows = rng.choice(docs.n_rows, size=count, replace=False)
    vectors = rng.normal(size=(count, docs.dim)).astype(np.float32)
    docs.add(rows, np.ones(count), vectors)
    engine.process([])  # the rest of a batch's work: the publisher looks at what changed


def _doc(doc_id: str, vector: np.ndarray) -> bytes:
    import orjson

    return orjson.dumps({"op": "upsert", "id": doc_id, "embedding": vector.tolist()})


def restore(engine: Engine, records, bootstrap: str | None, client: str) -> None:
    """The engine from its records: in memory, from the local cache, and (with a broker) from
    the changelog topics alone, against reading its raw arrays from disk."""
    with tempfile.TemporaryDirectory() as folder:
        arrays, _ = engine.to_state()
        raw = {name: arrays[name] for name in ("originals", "sums", "published", "clicks")}
        for name, array in raw.items():
            np.save(Path(folder) / f"{name}.npy", array)
        size = sum(a.nbytes for a in raw.values())
        del arrays, raw
        started = time.perf_counter()
        for name in ("originals", "sums", "published", "clicks"):
            np.load(Path(folder) / f"{name}.npy")
        baseline = time.perf_counter() - started
    print(f"baseline: reading the raw arrays ({size / 1e6:,.0f} MB) from disk: {baseline:.2f} s")

    def report(what: str, took: float, rebuilt: Engine) -> None:
        assert len(rebuilt.docs) == len(engine.docs)
        print(f"restore {what}: {took:.2f} s -> {took / baseline:.1f}x the raw arrays", flush=True)

    started = time.perf_counter()
    rebuilt = engine_from_records(engine.params, records)
    report(
        "from the records in memory (engine_from_records alone)",
        time.perf_counter() - started,
        rebuilt,
    )
    del rebuilt

    with tempfile.TemporaryDirectory() as folder:
        topics = {"documents": "b-documents", "sums": "b-sums", "engine": "b-engine"}
        cache = LocalCache(folder, topics, max_age_s=3600.0)
        tp = TopicPartition("b-engine", 0)
        started = time.perf_counter()
        cache.write(records, {tp: len(records)})
        written = time.perf_counter() - started
        mb = cache.path.stat().st_size / 1e6
        print(
            f"the local cache's first (whole) write, in its thread: {written:.2f} s, {mb:,.0f} MB"
        )
        started = time.perf_counter()
        cached, _ = cache.load({tp: len(records)})
        rebuilt = engine_from_records(engine.params, [], base=cached)
        report(
            "from the local cache (its read + engine_from_records; no tail)",
            time.perf_counter() - started,
            rebuilt,
        )
        del cached, rebuilt

    if bootstrap:
        config = load_config(
            overrides={
                "validation": {"fraction": 0.0},
                "kafka": {
                    "bootstrap_servers": bootstrap,
                    "client": client,
                    "group_id": f"bench-{int(time.time())}",
                    "max_request_size": 16_000_000,
                },
            }
        )
        topics = ensure_changelog(config)
        producer = make_producer(config)
        started = time.perf_counter()
        write_changelog(producer, topics, records)
        producer.flush()
        producer.close()
        print(
            f"  (the records into the changelog topics: {time.perf_counter() - started:.1f} s)",
            flush=True,
        )
        started = time.perf_counter()
        restored = read_changelog(config)
        report(
            f"from the changelog topics alone ({client})",
            time.perf_counter() - started,
            restored.engine,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--nudged", type=float, default=0.02)
    parser.add_argument("--shares", default="0.001,0.01,0.1")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--restore", action="store_true", help="also time a restore")
    parser.add_argument("--bootstrap", help="with --restore: also from this broker's changelog")
    parser.add_argument("--client", default="confluent-kafka")
    args = parser.parse_args()
    print(f"building {args.docs:,} x {args.dim} documents, {args.nudged:.0%} nudged")
    engine = build(args.docs, args.dim, args.nudged)
    rng = np.random.default_rng(1)

    with tempfile.TemporaryDirectory() as folder:
        store = CheckpointStore(Path(folder))
        started = time.perf_counter()
        arrays, meta = engine.to_state()
        store.save(arrays, meta, {})
        checkpoint = time.perf_counter() - started
        size = store.path.stat().st_size
    print(f"baseline: one whole checkpoint {checkpoint:.2f} s, {size / 1e6:,.0f} MB")

    started = time.perf_counter()
    writer = ChangelogWriter(engine, fresh=True)
    everything = writer.records()
    dump = time.perf_counter() - started
    dumped = sum(len(r.value or b"") for r in everything)
    print(
        f"the whole state as records (a new changelog): {dump:.2f} s, {dumped / 1e6:,.0f} MB, {len(everything):,} records"
    )
    if args.restore:
        restore(engine, everything, args.bootstrap, args.client)
    del everything

    for share in [float(s) for s in args.shares.split(",")]:
        times, sizes, counts = [], [], []
        for _ in range(args.repeat):
            click(engine, int(share * args.docs), rng)
            started = time.perf_counter()
            records = writer.records()
            times.append(time.perf_counter() - started)
            sizes.append(sum(len(r.value or b"") for r in records))
            counts.append(len(records))
        best = min(times)
        print(
            f"commit, {share:.1%} of the documents changed: {best:.3f} s (runs "
            f"{', '.join(f'{t:.3f}' for t in times)}), {counts[0]:,} records, "
            f"{sizes[0] / 1e6:.1f} MB; {best / checkpoint:.3f}x the whole checkpoint"
        )


if __name__ == "__main__":
    main()
