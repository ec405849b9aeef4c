"""The memory of an exactly-once member at 1M x 384, against its state's raw arrays.

    python benchmarks/bench_member_memory.py                # 1,000,000 docs x 384, 2% nudged
    python benchmarks/bench_member_memory.py --docs 100000  # quicker

A first process builds the state (as ``bench_changelog.py`` does) and writes it into a local
cache (``LocalCache``, as a member's refresher does), as of its last selection (the selector's backlog
of changed documents empty); a second process is the member: it restores
from that cache (``LocalCache.load`` + ``engine_from_records``, what a restart does), starts its
changelog writer, and takes clicks and commits (20, each reaching 0.1% of the documents). Reported from ``/proc/self/status``:
its resident memory then (``VmRSS``) and its peak (``VmHWM``, the restore's records and arrays
side by side), against the bytes of the state's raw arrays (originals, sums, published vectors,
clicks) and the interpreter with its libraries loaded (the baseline every process has).
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TOPICS = {"documents": "m-documents", "sums": "m-sums", "engine": "m-engine"}


def status(field: str) -> float:
    """A ``/proc/self/status`` memory field, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def write_state(folder: str, docs: int, dim: int, nudged: float) -> None:
    from bench_changelog import build

    from stream_nudge.engine.changelog import ChangelogWriter
    from stream_nudge.kafka.cache import LocalCache
    from stream_nudge.kafka.client import TopicPartition

    engine = build(docs, dim, nudged)
    # A member in its steady state has selected now and then: the selector's backlog of
    # documents changed since (rows a restore reads back) is what changed since the last one.
    engine.selector.sync_caches(engine.docs, engine.window)
    records = ChangelogWriter(engine, fresh=True).records()
    LocalCache(folder, TOPICS, 3600.0).write(records, {TopicPartition("m-engine", 0): 0})


def member(folder: str, commits: int) -> None:
    from bench_changelog import click

    from stream_nudge.config import load_config
    from stream_nudge.engine.changelog import ChangelogWriter, engine_from_records
    from stream_nudge.kafka.cache import LocalCache
    from stream_nudge.kafka.client import TopicPartition
    from stream_nudge.memory import give_back_freed_memory

    base = status("VmRSS")
    params = load_config(overrides={"validation": {"fraction": 0.0}})
    started = time.perf_counter()
    cached, _ = LocalCache(folder, TOPICS, 3600.0).load({TopicPartition("m-engine", 0): 0})
    engine = engine_from_records(params, [], base=cached)
    del cached
    give_back_freed_memory()  # as read_changelog does
    restored = time.perf_counter() - started
    writer = ChangelogWriter(engine)
    rng = np.random.default_rng(2)
    for _ in range(commits):
        click(engine, max(1, len(engine.docs) // 1000), rng)
        writer.records()
    arrays, _ = engine.to_state()
    raw_mb = sum(arrays[n].nbytes for n in ("originals", "sums", "published", "clicks")) / 2**20
    del arrays
    gc.collect()
    rss, peak = status("VmRSS"), status("VmHWM")
    print(
        f"restored {len(engine.docs):,} documents from the cache in {restored:.1f} s; {commits} commits"
    )
    print(f"the interpreter with numpy and stream_nudge loaded: {base:,.0f} MB")
    print(f"the state's raw arrays: {raw_mb:,.0f} MB")
    print(
        f"member resident memory: {rss:,.0f} MB = {rss / raw_mb:.2f}x the raw arrays "
        f"({(rss - base) / raw_mb:.2f}x without the interpreter's {base:,.0f} MB)"
    )
    print(f"peak (the restore): {peak:,.0f} MB = {peak / raw_mb:.2f}x the raw arrays")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--nudged", type=float, default=0.02)
    parser.add_argument("--commits", type=int, default=20, help="the member's, 0.1%% of docs each")
    parser.add_argument("--member", help=argparse.SUPPRESS)  # the second process: its cache folder
    args = parser.parse_args()
    if args.member:
        member(args.member, args.commits)
        return
    with tempfile.TemporaryDirectory() as folder:
        print(
            f"building {args.docs:,} x {args.dim} documents, {args.nudged:.0%} nudged, into a local cache"
        )
        write_state(folder, args.docs, args.dim, args.nudged)
        cmd = [sys.executable, __file__, "--member", folder, "--commits", str(args.commits)]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
