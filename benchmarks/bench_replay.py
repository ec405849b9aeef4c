"""The streaming engine's speed and memory, each next to a baseline timed in the same run.

    python benchmarks/bench_replay.py ingest      # 200,000 events, 50,000 docs, d=384: JSON and base64
    python benchmarks/bench_replay.py memory      # 1,000,000 docs x 384 held by the engine
    python benchmarks/bench_replay.py reselect    # window 2,000, 1,000,000 docs, 20,000 nudged
    python benchmarks/bench_replay.py all

ingest: events/s of the replay path (JSONL source -> engine -> JSONL sink) over the events file,
next to a bare decode loop (orjson.loads plus the vector to a float32 array) over the same file,
in interleaved rounds (best of each compared). Also next to the same loop with the engine's own
decoder for the vectors (simdjson for JSON arrays, pybase64 for base64), which is not the
target's baseline: it shows what the engine adds to its own decoding. Gamma is
selected only at the end (timed apart, once): selections have their own benchmark.

memory: what tracemalloc sees allocated after upserting the documents, over their raw float32 size.

reselect: one re-selection of gamma with every window query new (a full refresh), with 10% new, and
with 10% new after clicks on 1% of the nudged documents, next to one (2,000 x 1,000,000 x 384) float32 product, computed in blocks of documents as any
implementation must (its full output would be 8 GB).
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import orjson
import pybase64
import simdjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from profiling import profiled

from stream_nudge.config import load_config
from stream_nudge.engine import Engine
from stream_nudge.loop import Ending, run
from stream_nudge.messages import Record
from stream_nudge.sinks import JsonlSink
from stream_nudge.sources import JsonlSource

NUMPY = orjson.OPT_SERIALIZE_NUMPY
# The run loop without its final selection, which ingest times on its own.
NO_SELECTION = Ending(select=False)


def b64(v: np.ndarray) -> str:
    return base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")


def write_logs(folder: Path, n_docs: int, n_events: int, dim: int, encoding: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    docs_path, events_path = folder / f"docs-{encoding}.jsonl", folder / f"events-{encoding}.jsonl"
    with docs_path.open("wb") as f:
        for start in range(0, n_docs, 10_000):
            block = rng.normal(size=(min(10_000, n_docs - start), dim)).astype(np.float32)
            for i, v in enumerate(block):
                body = {"op": "upsert", "id": f"doc-{start + i}"}
                body.update({"embedding": v} if encoding == "json" else {"embedding_b64": b64(v)})
                f.write(orjson.dumps(body, option=NUMPY) + b"\n")
    # Clicks follow a Zipf-like popularity, as real traffic does.
    popularity = 1.0 / np.arange(1, n_docs + 1) ** 0.8
    popularity /= popularity.sum()
    with events_path.open("wb") as f:
        for start in range(0, n_events, 10_000):
            n = min(10_000, n_events - start)
            queries = rng.normal(size=(n, dim)).astype(np.float32)
            targets = rng.choice(n_docs, size=n, p=popularity)
            for i in range(n):
                body = {"query_id": f"q-{(start + i) // 2}", "doc_id": f"doc-{targets[i]}"}
                body.update(
                    {"query_embedding": queries[i]}
                    if encoding == "json"
                    else {"query_embedding_b64": b64(queries[i])}
                )
                f.write(orjson.dumps(body, option=NUMPY) + b"\n")
    return docs_path, events_path


def decode_loop(path: Path, field: str) -> float:
    """The baseline: read, parse and turn each vector into a float32 array; nothing else."""
    t0 = time.perf_counter()
    with path.open("rb") as f:
        for line in f:
            obj = orjson.loads(line)
            if field in obj:
                np.array(obj[field], dtype=np.float32)
            else:
                np.frombuffer(base64.b64decode(obj[field + "_b64"]), dtype="<f4").copy()
    return time.perf_counter() - t0


def own_decoder_loop(path: Path, field: str) -> float:
    """Not the baseline: the decode loop with the decoders the engine uses for vectors (simdjson,
    numbers straight to float64, for JSON arrays; orjson and pybase64 for base64), to show what
    the engine adds to its own decoding."""
    parse = simdjson.Parser().parse
    t0 = time.perf_counter()
    with path.open("rb") as f:
        for line in f:
            if b'_b64"' in line:
                text = orjson.loads(line)[field + "_b64"]
                np.frombuffer(pybase64.b64decode(text, validate=True), dtype="<f4").copy()
            else:
                vector = parse(line)[field]
                np.frombuffer(vector.as_buffer(of_type="d"), dtype=np.float64).astype(np.float32)
                del vector
    return time.perf_counter() - t0


def with_documents(config, docs_path: Path, out: Path):
    """A fresh engine that has read the documents file (untimed), and its JSONL sink."""
    engine = Engine(config)
    sink = JsonlSink(out)
    run(engine, JsonlSource(docs_path, None), sink, config.replay.batch_size, ending=NO_SELECTION)
    return engine, sink


def ingest(n_docs: int, n_events: int, dim: int, repeat: int, profile: bool = False) -> dict:
    config = load_config(overrides={"gamma": {"every_events": 0, "every_seconds": 0}})
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for encoding in ("json", "base64"):
            docs_path, events_path = write_logs(folder, n_docs, n_events, dim, encoding)
            base_times, engine_times, own_times = [], [], []
            # Rounds of each, interleaved, best of each compared: the machine's speed drifts
            # by tens of percent over a minute.
            for round_ in range(repeat):
                base_times.append(decode_loop(events_path, "query_embedding"))
                own_times.append(own_decoder_loop(events_path, "query_embedding"))
                engine, sink = with_documents(config, docs_path, folder / "out.jsonl")
                source = JsonlSource(None, events_path)
                t0 = time.perf_counter()
                run(engine, source, sink, config.replay.batch_size, ending=NO_SELECTION)
                engine_times.append(time.perf_counter() - t0)
                if round_ == 0:
                    t0 = time.perf_counter()
                    sink.write(engine.finish())
                    finish = time.perf_counter() - t0
                sink.close()
                del engine
            base, mine = min(base_times), min(engine_times)
            results[encoding] = {
                "events": n_events,
                "engine_events_per_s": n_events / mine,
                "decode_loop_events_per_s": n_events / base,
                "ratio": base / mine,
                "rounds_ratios": [b / e for b, e in zip(base_times, engine_times, strict=True)],
                "final_selection_s": finish,
                "events_file_mb": events_path.stat().st_size / 2**20,
            }
            results[encoding]["own_decoder_loop_events_per_s"] = n_events / min(own_times)
            results[encoding]["ratio_to_own_decoder_loop"] = min(own_times) / mine
            if profile:
                engine, sink = with_documents(config, docs_path, folder / "out.jsonl")
                source = JsonlSource(None, events_path)
                profiled(
                    lambda e=engine, s=source, k=sink: run(
                        e, s, k, config.replay.batch_size, ending=NO_SELECTION
                    ),
                    f"ingest, {encoding} vectors (the events only)",
                )
                sink.close()
            r = results[encoding]
            rounds = ", ".join(f"{x:.2f}" for x in r["rounds_ratios"])
            print(
                f"ingest {encoding:6s}: engine {r['engine_events_per_s']:9,.0f} events/s, decode loop "
                f"{r['decode_loop_events_per_s']:9,.0f} events/s -> {r['ratio']:.2f}x best of "
                f"{repeat} (rounds {rounds}); with the engine's own decoders the loop does "
                f"{r['own_decoder_loop_events_per_s']:,.0f} events/s -> "
                f"{r['ratio_to_own_decoder_loop']:.2f}x (final selection "
                f"{r['final_selection_s']:.2f} s)"
            )
    return results


def memory(n_docs: int, dim: int) -> dict:
    config = load_config(overrides={"gamma": {"every_events": 0, "every_seconds": 0}})
    rng = np.random.default_rng(0)
    gc.collect()
    tracemalloc.start()
    engine = Engine(config)
    for start in range(0, n_docs, 20_000):
        block = rng.normal(size=(min(20_000, n_docs - start), dim)).astype(np.float32)
        records = [
            Record("docs", orjson.dumps({"id": f"doc-{start + i}", "embedding_b64": b64(v)}))
            for i, v in enumerate(block)
        ]
        engine.process(records)
        del records, block
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    raw = n_docs * dim * 4
    out = {
        "documents": n_docs,
        "raw_bytes": raw,
        "held_bytes": held,
        "held_ratio": held / raw,
        "peak_ratio": peak / raw,
    }
    print(
        f"memory: {n_docs:,} x {dim} held in {held / 2**30:.2f} GiB = {held / raw:.2f}x raw "
        f"(peak while loading {peak / raw:.2f}x)"
    )
    return out


def reselect(
    n_docs: int, dim: int, window: int, nudged: int, method: str, profile: bool = False
) -> dict:
    from stream_nudge.engine.window import ValidationWindow

    rng = np.random.default_rng(1)
    config = load_config(overrides={"method": method, "validation": {"window": window}})
    engine = Engine(config)
    engine._start(dim)
    docs = engine.docs
    corpus = rng.normal(size=(n_docs, dim)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    docs._grow_rows(n_docs)
    docs.originals[:n_docs] = corpus
    docs.alive[:n_docs] = True
    docs.ids[:n_docs] = [f"doc-{i}" for i in range(n_docs)]
    docs.row_of.update({f"doc-{i}": i for i in range(n_docs)})
    docs.n_rows = n_docs
    del corpus
    # Clicked documents: queries near them, with a shared domain shift.
    shift = rng.normal(size=dim).astype(np.float32) / np.sqrt(dim)
    clicked = rng.choice(n_docs, size=nudged, replace=False)
    queries = (
        docs.originals[clicked]
        + shift
        + 0.5 * rng.normal(size=(nudged, dim)).astype(np.float32) / np.sqrt(dim)
    )
    docs.add(clicked, np.ones(nudged), queries)
    answers = rng.choice(clicked, size=window)
    v = (
        docs.originals[answers]
        + shift
        + 0.5 * rng.normal(size=(window, dim)).astype(np.float32) / np.sqrt(dim)
    )
    engine.window = ValidationWindow(window, dim, engine.objective.k)
    for i in range(window):
        engine.window.add(f"v-{i}", v[i], f"doc-{answers[i]}", 1.0)

    # Baseline: one (window x corpus) product, in blocks.
    v_t = np.ascontiguousarray(engine.window.unit[:window].T)
    t0 = time.perf_counter()
    for start in range(0, n_docs, 16384):
        docs.originals[start : start + 16384] @ v_t
    product = time.perf_counter() - t0

    t0 = time.perf_counter()
    engine.reselect()
    full = time.perf_counter() - t0
    # Of which the corpus pass that rebuilds every window query's cache:
    slots = engine.window.active_slots()
    untouched = docs.untouched_mask()
    t0 = time.perf_counter()
    engine.window.refresh(slots, docs.originals, untouched, docs.row_of.get)
    corpus_pass = time.perf_counter() - t0
    # 10% of the window replaced by new queries.
    new = window // 10
    for i in range(new):
        engine.window.add(f"w-{i}", v[i], f"doc-{answers[i]}", 1.0)
    t0 = time.perf_counter()
    engine.reselect()
    partial = time.perf_counter() - t0
    # 10% new again, and 1% of the nudged documents clicked in between (their sums, hence
    # their columns, change): the cache recomputes those columns and the queries they can reach.
    for i in range(new):
        engine.window.add(f"x-{i}", v[2 * new + i], f"doc-{answers[2 * new + i]}", 1.0)
    touched = rng.choice(clicked, size=nudged // 100, replace=False)
    docs.add(touched, np.ones(len(touched)), docs.originals[touched] + shift)
    t0 = time.perf_counter()
    engine.reselect()
    clicked_too = time.perf_counter() - t0
    if profile:
        # The same again (another 10% of the window new), under the profiler.
        for i in range(new):
            engine.window.add(f"p-{i}", v[new + i], f"doc-{answers[new + i]}", 1.0)
        profiled(engine.reselect, f"re-selection, {method}, 10% of the window new")
    out = {
        "method": method,
        "product_s": product,
        "full_refresh_s": full,
        "full_ratio": full / product,
        "corpus_pass_s": corpus_pass,
        "corpus_pass_ratio": corpus_pass / product,
        "ten_percent_new_s": partial,
        "ten_percent_ratio": partial / product,
        "ten_percent_and_clicks_s": clicked_too,
        "ten_percent_and_clicks_ratio": clicked_too / product,
        "gamma": engine.gamma,
    }
    print(
        f"reselect {method}: product {product:.2f} s; full refresh {full:.2f} s = {full / product:.2f}x "
        f"(its corpus pass {corpus_pass:.2f} s = {corpus_pass / product:.2f}x); "
        f"10% new {partial:.2f} s = {partial / product:.2f}x; 10% new and 1% of the nudged "
        f"clicked {clicked_too:.2f} s = {clicked_too / product:.2f}x (gamma {engine.gamma:.4f})"
    )
    return out


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("what", choices=["ingest", "memory", "reselect", "all"])
    p.add_argument("--docs", type=int, default=None)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--method", default="both", choices=["nudge-n", "nudge-m", "both"])
    p.add_argument("--json", type=Path)
    p.add_argument(
        "--profile",
        action="store_true",
        help="then profile: one ingest run per encoding; the re-selection with 10%% of the window new",
    )
    a = p.parse_args(argv)
    results = {}
    if a.what in ("ingest", "all"):
        results["ingest"] = ingest(a.docs or 50_000, a.events, a.dim, a.repeat, a.profile)
    if a.what in ("memory", "all"):
        results["memory"] = memory(a.docs or 1_000_000, a.dim)
    if a.what in ("reselect", "all"):
        methods = ["nudge-n", "nudge-m"] if a.method == "both" else [a.method]
        results["reselect"] = [
            reselect(a.docs or 1_000_000, a.dim, 2000, 20_000, m, a.profile) for m in methods
        ]
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
