"""Sources: where records come from. JSONL files and memory here; Kafka in ``stream_nudge.kafka``.

Every source implements one interface, so replaying a log and consuming Kafka run the same engine:

- ``next_batch(max_records)`` returns the next records, or ``None`` at the end of the input (a live
  source never ends; it returns ``[]`` when nothing is there yet);
- ``caught_up()`` says whether everything there is to read has been read, for now (a file is
  always caught up: it never makes a reader wait);
- ``position()`` says where to resume: everything before it has been returned.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import orjson

from stream_nudge.messages import Record

__all__ = ["JsonlSource", "MemorySource", "Source", "TimeOrderedSource"]

# Files are read in chunks of this size (a few hundred records of 384-d JSON vectors).
_CHUNK = 1 << 20


class Source(Protocol):
    def next_batch(self, max_records: int) -> list[Record] | None: ...

    def caught_up(self) -> bool: ...

    def position(self) -> dict: ...

    def close(self) -> None: ...


class MemorySource:
    """Records from a list, in order (for tests and the demo)."""

    def __init__(self, records: Iterable[Record]):
        self._records = list(records)
        self._next = 0

    def next_batch(self, max_records: int) -> list[Record] | None:
        if self._next >= len(self._records):
            return None
        batch = self._records[self._next : self._next + max_records]
        self._next += len(batch)
        return batch

    def caught_up(self) -> bool:
        return True  # never waits: everything is read or the input has ended

    def position(self) -> dict:
        return {"next": self._next}

    def close(self) -> None:
        pass


class JsonlSource:
    """The documents file first, then the events file, one record per line, in file order.

    Lines longer than ``max_line_bytes`` are not read into memory whole: the record holds the first
    ``max_line_bytes + 1`` bytes (so the decoder sees it as oversize) and the rest is skipped.
    Blank lines are skipped.
    """

    def __init__(
        self,
        docs: str | os.PathLike | None,
        events: str | os.PathLike | None,
        max_line_bytes: int = 1 << 20,
        chunk_bytes: int = _CHUNK,
    ):
        self._files = [
            (topic, Path(p)) for topic, p in (("docs", docs), ("events", events)) if p is not None
        ]
        for _, path in self._files:
            if not path.is_file():
                raise FileNotFoundError(f"no such file: {path}")
        self.max_line_bytes = max_line_bytes
        self._chunk_bytes = chunk_bytes
        self._chunks = self._read()
        # Records read but not yet returned: _ready[_next:].
        self._ready: list[Record] = []
        self._next = 0
        self._path: Path | None = None  # the file the records in _ready come from
        self._position = {"file": None, "line": 0}
        self.bytes_total = sum(path.stat().st_size for _, path in self._files)
        self.bytes_read = 0

    def _read(self) -> Iterator[tuple[Path, list[Record], int]]:
        """Yields each chunk's records, with its file and the number of its last line.

        Reads in large chunks and splits lines itself: per-line readline() costs more than the rest
        of a record's handling, and so does any per-line Python step this can do for a whole chunk
        at once. A line longer than the limit is cut at limit + 1 bytes and the rest skipped, so
        memory stays bounded whatever the input.
        """
        limit = self.max_line_bytes
        for topic, path in self._files:
            name = path.name
            number = 0
            with path.open("rb") as f:
                tail = b""
                skipping = False
                while True:
                    chunk = f.read(self._chunk_bytes)
                    self.bytes_read += len(chunk)
                    if not chunk:
                        break
                    lines = chunk.split(b"\n")
                    # Only the first piece is joined to the tail: joining whole chunks would copy
                    # every byte once more.
                    lines[0] = tail + lines[0]
                    carriage = b"\r" in chunk or b"\r" in tail
                    tail = lines.pop()
                    if skipping and lines:
                        del lines[0]  # the end of an oversize line, already counted
                        skipping = False
                    if not carriage and _plain(lines, limit):
                        first = number + 1
                        number += len(lines)
                        records = [
                            Record(topic, line, {"file": name, "line": n})
                            for n, line in enumerate(lines, first)
                        ]
                    else:
                        records, number = _records(topic, name, lines, number, limit)
                    if len(tail) > limit:
                        if not skipping:
                            number += 1
                            records.append(
                                Record(topic, tail[: limit + 1], {"file": name, "line": number})
                            )
                        skipping = True
                        tail = b""
                    yield path, records, number
                if tail and not skipping:
                    records, number = _records(topic, name, [tail], number, limit)
                    yield path, records, number

    def next_batch(self, max_records: int) -> list[Record] | None:
        batch: list[Record] = []
        while len(batch) < max_records:
            ready, start = self._ready, self._next
            if start >= len(ready):
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._path, self._ready, last_line = chunk
                self._next = 0
                # Nothing of this chunk returned yet; once all of it is, its last line is the
                # position (blank lines after the last record included, as when read line by line).
                self._position = {"file": str(self._path), "line": last_line}
                continue
            stop = min(len(ready), start + max_records - len(batch))
            batch.extend(ready[start:stop])
            self._next = stop
        return batch or None

    def caught_up(self) -> bool:
        return True  # never waits: everything is read or the input has ended

    def position(self) -> dict:
        if 0 < self._next < len(self._ready):
            # Inside a chunk: right after the last record returned.
            return {"file": str(self._path), "line": self._ready[self._next - 1].position["line"]}
        return dict(self._position)

    def close(self) -> None:
        self._chunks.close()


# How a line that is blank, or might be (bytes.strip() removes these), starts.
_BLANK_STARTS = frozenset((b"", b" ", b"\t", b"\r", b"\x0b", b"\x0c"))


def _plain(lines: list[bytes], limit: int) -> bool:
    """Whether ``lines`` (without carriage returns) need no per-line care: none is blank or could
    be, none is over the limit. Two quick passes over the list instead of a step per line."""
    return _BLANK_STARTS.isdisjoint([line[:1] for line in lines]) and (
        not lines or max(map(len, lines)) <= limit
    )


def _records(
    topic: str, name: str, lines: list[bytes], number: int, limit: int
) -> tuple[list[Record], int]:
    """Records of ``lines`` one by one: blank lines skipped, carriage returns and overlong lines
    cut. Returns them and the number of the last line."""
    records = []
    for line in lines:
        number += 1
        if len(line) > limit:
            line = line[: limit + 1]
        if line.strip():
            records.append(Record(topic, line.rstrip(b"\r"), {"file": name, "line": number}))
    return records, number


class TimeOrderedSource:
    """The documents and events files merged into one stream by their ``"ts"`` (replay's
    ``--order time``), so that a click that came before its document's delete is applied to it.

    Each file is taken to be a log, in time order: a line without a usable ``ts`` (or with one
    earlier than the line before it) keeps its place in its file, at the time of the line before
    it. At equal times a document goes first. Costs one extra parse of each line's JSON.
    """

    def __init__(
        self,
        docs: str | os.PathLike,
        events: str | os.PathLike,
        max_line_bytes: int = 1 << 20,
        chunk_bytes: int = _CHUNK,
    ):
        self._sources = [
            JsonlSource(docs, None, max_line_bytes, chunk_bytes),
            JsonlSource(None, events, max_line_bytes, chunk_bytes),
        ]
        self._heads: list[list[Record]] = [[], []]
        self._at = [0, 0]
        self._clock = [-math.inf, -math.inf]
        self._times: list[list[float]] = [[], []]
        self._done = [False, False]
        self.bytes_total = sum(s.bytes_total for s in self._sources)

    @property
    def bytes_read(self) -> int:
        return sum(s.bytes_read for s in self._sources)

    def _fill(self, i: int) -> bool:
        """Make sure source ``i`` has a record at its head; False when it has ended."""
        while self._at[i] >= len(self._heads[i]):
            if self._done[i]:
                return False
            batch = self._sources[i].next_batch(1000)
            if batch is None:
                self._done[i] = True
                return False
            clock, times = self._clock[i], []
            for record in batch:
                clock = max(clock, _time_of(record.value))
                times.append(clock)
            self._clock[i] = clock
            self._heads[i], self._times[i], self._at[i] = batch, times, 0
        return True

    def next_batch(self, max_records: int) -> list[Record] | None:
        batch: list[Record] = []
        while len(batch) < max_records:
            has_docs, has_events = self._fill(0), self._fill(1)
            if not (has_docs or has_events):
                break
            i = (
                0
                if has_docs
                and (not has_events or self._times[0][self._at[0]] <= self._times[1][self._at[1]])
                else 1
            )
            batch.append(self._heads[i][self._at[i]])
            self._at[i] += 1
        return batch or None

    def caught_up(self) -> bool:
        return True  # never waits: everything is read or the input has ended

    def position(self) -> dict:
        return {"docs": self._sources[0].position(), "events": self._sources[1].position()}

    def close(self) -> None:
        for source in self._sources:
            source.close()


def _time_of(value: bytes | None) -> float:
    """A line's ``"ts"`` if it has a finite number there, else -inf (no time of its own)."""
    try:
        obj = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        return -math.inf
    ts = obj.get("ts") if obj.__class__ is dict else None
    if ts.__class__ in (int, float) and math.isfinite(ts):
        return float(ts)
    return -math.inf
