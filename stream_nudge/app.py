"""``stream-nudge replay``: JSONL files through the run loop into JSONL files, and its summary."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from stream_nudge.config import Config
from stream_nudge.engine import Engine
from stream_nudge.loop import Ending, run
from stream_nudge.sinks import JsonlSink
from stream_nudge.sources import JsonlSource, TimeOrderedSource

__all__ = ["Summary", "replay", "summarize"]


@dataclass
class Summary:
    events: int
    documents: int
    nudged: int
    gamma: float
    objective: str
    before: float | None
    after: float | None
    dead_letters: dict[str, int] = field(default_factory=dict)
    valid: int = 0  # input records that were not dead letters
    duplicates: int = 0  # re-delivered (query, document) pairs, ignored
    tombstones: int = 0  # of the updates, deleted documents
    dimension: int | None = None
    dimension_from: str | None = None  # where the first valid vector was
    pending: int = 0  # clicks still waiting for their document
    pending_documents: int = 0  # ... for this many document ids
    updates: int = 0
    selections: int = 0
    seconds: float = 0.0

    @property
    def rejected(self) -> int:
        return sum(self.dead_letters.values())

    def rejected_fraction(self) -> float:
        total = self.valid + self.rejected
        return self.rejected / total if total else 0.0

    def lines(self) -> list[str]:
        score = (
            f"{self.objective} on the validation window: {self.before:.4f} before, {self.after:.4f} after"
            if self.before is not None
            else f"{self.objective}: no validation queries with known answers"
        )
        dead = ", ".join(f"{k} {v:,}" for k, v in sorted(self.dead_letters.items())) or "none"
        records = self.valid + self.rejected
        rate = records / self.seconds if self.seconds > 0 else 0.0
        dimension = (
            f"{self.dimension} (from {self.dimension_from})"
            if self.dimension is not None
            else "none (no valid vector)"
        )
        return [
            f"events          {self.events:,}",
            f"documents       {self.documents:,} ({self.nudged:,} nudged)",
            f"dimension       {dimension}",
            f"gamma           {self.gamma:.6g} ({_count(self.selections, 'selection')})",
            score,
            f"updates         {self.updates:,} ({_count(self.tombstones, 'tombstone')})",
            f"dead letters    {self.rejected:,} ({dead})",
            *([f"re-delivered    {self.duplicates:,} pairs ignored"] if self.duplicates else []),
            *(
                [
                    f"pending         {self.pending:,} clicks still wait for "
                    f"{self.pending_documents:,} documents that never arrived "
                    "(pending.dead_letter_at_end: true writes them to the dead letters)"
                ]
                if self.pending
                else []
            ),
            f"wall time       {self.seconds:.2f} s ({rate:,.0f} input lines/s)",
        ]


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def summarize(engine: Engine, seconds: float) -> Summary:
    last = engine.last_selection
    docs = engine.docs
    return Summary(
        events=engine.events,
        documents=len(docs) if docs is not None else 0,
        nudged=len(docs.nudged_rows()) if docs is not None else 0,
        gamma=engine.gamma,
        objective=engine.objective.name,
        before=last.value_before if last else None,
        after=last.value_after if last else None,
        dead_letters=dict(engine.dead_letters),
        duplicates=engine.counts["duplicate_pairs"],
        tombstones=engine.counts["tombstones"],
        dimension=engine.decoder.dimension,
        dimension_from=engine.decoder.dimension_from,
        pending=engine.pending_count,
        pending_documents=engine.pending.documents,
        valid=sum(engine.counts[k] for k in ("upserts", "deletes", "duplicate_events"))
        + engine.events,
        updates=engine.counts["updates"] + engine.counts["tombstones"],
        selections=engine.counts["selections"],
        seconds=seconds,
    )


class _Progress:
    """A one-line progress bar on a terminal: events/s and the time left, by bytes read."""

    def __init__(self, engine: Engine, source: JsonlSource | TimeOrderedSource, stream=None):
        # sys.stderr as it is now, not as it was at import (a test or a caller may replace it).
        stream = stream if stream is not None else sys.stderr
        self.engine, self.source, self.stream = engine, source, stream
        self.enabled = stream.isatty()
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, _batch=None) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.2:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        done = self.source.bytes_read / max(self.source.bytes_total, 1)
        eta = elapsed * (1 - done) / done if done > 0 else float("nan")
        # Documents load first: count every record, not only events.
        e = self.engine
        records = (
            e.events + e.counts["upserts"] + e.counts["deletes"] + sum(e.dead_letters.values())
        )
        rate = records / elapsed
        bar = "#" * int(30 * done)
        self.stream.write(
            f"\r[{bar:<30}] {100 * done:5.1f}%  {rate:,.0f} records/s  ETA {eta:5.1f} s "
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 78 + "\r")
            self.stream.flush()


def replay(
    config: Config,
    docs: str | os.PathLike | None,
    events: str | os.PathLike | None,
    out: str | os.PathLike,
    dead_letter: str | os.PathLike | None = None,
    progress: bool = True,
) -> Summary:
    """``stream-nudge replay``: documents, then events, in file order (or both merged by time,
    ``replay.order: time``); then a final selection."""
    started = time.perf_counter()
    if dead_letter is None:
        dead_letter = Path(str(out) + ".dead-letters.jsonl")
    engine = Engine(config)
    if config.replay.order == "time":
        source = TimeOrderedSource(docs, events, config.limits.max_message_bytes)
    else:
        source = JsonlSource(docs, events, config.limits.max_message_bytes)
    sink = JsonlSink(out, dead_letter)
    bar = _Progress(engine, source) if progress else None
    try:
        ending = Ending(select=True, drain_pending=config.pending.dead_letter_at_end)
        run(engine, source, sink, config.replay.batch_size, ending=ending, on_batch=bar)
    finally:
        if bar is not None:
            bar.close()
        source.close()
        sink.close()
    return summarize(engine, time.perf_counter() - started)
