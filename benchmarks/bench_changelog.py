"""What a commit costs the loop with the changelog, against writing the whole checkpoint.

    python benchmarks/bench_changelog.py                 # 1,000,000 docs x 384, 2% nudged
    python benchmarks/bench_changelog.py --docs 100000   # quicker

An engine holds ``--docs`` documents, ``--nudged`` of them with query sums. For each share of
changed documents (0.1%, 1%, 10%), clicks reach that many documents (not timed: that is the
batch's work), then the commit's part is timed: the changelog writer turning what changed into
records (``ChangelogWriter.records``: the encoding the loop does before handing the records to the
producer). The baseline, in the same run: one checkpoint of the same engine as every commit wrote
it before the changelog (``Engine.to_state`` and ``CheckpointStore.save``).

Restore (``--restore``): an engine rebuilt from the whole state's records
(``engine_from_records``: decoding and placing every record, in memory), next to reading the
state's raw arrays from disk (``np.load`` of the originals, sums, published vectors and clicks:
the baseline). Reading the records from the changelog topics is not in it (the broker's part).

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


def restore(engine: Engine, records) -> None:
    """The engine from its records, against reading its raw arrays from disk."""
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
    started = time.perf_counter()
    rebuilt = engine_from_records(engine.params, records)
    took = time.perf_counter() - started
    assert len(rebuilt.docs) == len(engine.docs)
    print(
        f"restore from the records: {took:.2f} s; reading the raw arrays ({size / 1e6:,.0f} MB) "
        f"from disk: {baseline:.2f} s -> {took / baseline:.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--nudged", type=float, default=0.02)
    parser.add_argument("--shares", default="0.001,0.01,0.1")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--restore", action="store_true", help="also time a restore")
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
        restore(engine, everything)
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
