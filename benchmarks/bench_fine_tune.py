"""fine_tune speed and memory next to one (validation x corpus) float32 matrix product.

    python benchmarks/bench_fine_tune.py            # 100,000 docs, d=384, 10,000 train, 1,000 val
    python benchmarks/bench_fine_tune.py --docs 20000 --train 2000 --val 200   # a quick look

Each timing is the median of ``--repeat`` runs; the product is timed the same way in the same run,
so the ratio is what to read on a shared machine. The runs are interleaved (one product, one corpus
pass, one call per method, then again), so that a neighbour's load, which comes and goes over
seconds, weighs on the baseline and on the calls alike. Peak memory is what tracemalloc sees numpy
allocate during one call (the input corpus itself excluded), as a multiple of the corpus array.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from profiling import profiled

from stream_nudge import fine_tune
from stream_nudge.core.finetune import _answers, query_directions, static_others
from stream_nudge.core.geometry import unit_rows


def synthetic(n_docs, dim, n_train, n_val, seed=0):
    """Documents around topic centres; queries near one or two answers of a topic, shifted off-axis."""
    rng = np.random.default_rng(seed)
    n_topics = max(10, n_docs // 100)
    centres = rng.normal(size=(n_topics, dim)).astype(np.float32)
    topic = rng.integers(0, n_topics, size=n_docs)
    docs = centres[topic] + rng.normal(scale=1.0, size=(n_docs, dim)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    # Per-coordinate scales divided by sqrt(dim) give vectors of norm ~2 and ~1.5 next to unit
    # documents: a domain shift that base similarity often misses, and noise.
    shift = rng.normal(scale=2.0 / np.sqrt(dim), size=dim).astype(np.float32)
    # Clicks go to a pool of documents as many as the training queries, so that validation answers
    # are often documents that training moved, as with real traffic.
    pool = rng.choice(n_docs, size=min(n_docs, n_train), replace=False)

    def queries(n):
        answers = [list(rng.choice(pool, size=rng.integers(1, 3), replace=False)) for _ in range(n)]
        q = np.stack([docs[a].mean(0) for a in answers])
        q += shift + rng.normal(scale=1.5 / np.sqrt(dim), size=q.shape).astype(np.float32)
        return q.astype(np.float32), answers

    train, train_ans = queries(n_train)
    val, val_ans = queries(n_val)
    return docs, train, train_ans, val, val_ans


def timed_rounds(fns, repeat):
    """Median seconds and last result of each of ``fns``, called in turn ``repeat`` times."""
    times = {name: [] for name in fns}
    outs = {}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}, outs


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--train", type=int, default=10_000)
    p.add_argument("--val", type=int, default=1_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--profile", action="store_true", help="then profile one call of each method")
    a = p.parse_args(argv)

    docs, train, train_ans, val, val_ans = synthetic(a.docs, a.dim, a.train, a.val)
    corpus_bytes = docs.nbytes
    # The part of fine_tune that reads the corpus: normalise it and score it (hit@1: k = 1).
    t_ptr, t_rows = _answers("train_answers", train_ans, len(train), len(docs))
    v_ptr, v_rows = _answers("val_answers", val_ans, len(val), len(docs))
    nudged, _ = query_directions(train, t_ptr, t_rows, np.ones(len(train)), len(docs))
    col_of = np.full(len(docs), -1, dtype=np.int64)
    col_of[nudged] = np.arange(len(nudged))
    v_unit = unit_rows(val)[0]
    methods = ("nudge-m", "nudge-n")

    def product():
        val @ docs.T  # the table is dropped at once, as each round's was before

    def corpus_pass():
        static_others(v_unit, np.empty_like(docs), col_of, v_ptr, v_rows, 1, raw=docs)

    fns = {"product": product, "pass": corpus_pass}
    for method in methods:
        fns[method] = lambda m=method: fine_tune(docs, train, train_ans, val, val_ans, method=m)
    seconds, outs = timed_rounds(fns, a.repeat)
    product_s = seconds["product"]
    results = {
        "shape": {"docs": a.docs, "dim": a.dim, "train": a.train, "val": a.val},
        "product_seconds": product_s,
    }
    print(
        f"corpus {a.docs} x {a.dim} float32 ({corpus_bytes / 2**20:.0f} MiB), {a.train} train, {a.val} val"
    )
    print(f"one (val x corpus) float32 product: {product_s:.3f} s (median of {a.repeat})")
    pass_s = seconds["pass"]
    results["corpus_pass_seconds"] = pass_s
    print(f"of which its corpus pass: {pass_s:.3f} s = {pass_s / product_s:.2f}x the product")
    for method in methods:
        result = outs[method]
        tracemalloc.start()
        fine_tune(docs, train, train_ans, val, val_ans, method=method)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        results[method] = {
            "seconds": seconds[method],
            "ratio_to_product": seconds[method] / product_s,
            "peak_bytes": peak,
            "peak_ratio_to_corpus": peak / corpus_bytes,
            "gamma": result.gamma,
            "validation_before": result.validation.before,
            "validation_after": result.validation.after,
            "nudged": result.nudged,
        }
        print(
            f"{method}: {seconds[method]:.3f} s = {seconds[method] / product_s:.2f}x the product; "
            f"peak {peak / 2**20:.0f} MiB = {peak / corpus_bytes:.2f}x the corpus; "
            f"gamma {result.gamma:.4f}, hit@1 {result.validation.before:.3f} -> {result.validation.after:.3f}"
        )
    if a.profile:
        for method in methods:
            profiled(
                lambda m=method: fine_tune(docs, train, train_ans, val, val_ans, method=m),
                f"fine_tune, {method}",
            )
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
