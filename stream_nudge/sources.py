"""Sources: where records come from. JSONL files and memory here; Kafka in ``stream_nudge.kafka``.

Every source implements one interface, so replaying a log and consuming Kafka run the same engine:

- ``next_batch(max_records)`` returns the next records, or ``None`` at the end of the input (a live
  source never ends; it returns ``[]`` when nothing is there yet);
- ``position()`` says where to resume: everything before it has been returned.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from stream_nudge.messages import Record

__all__ = ["JsonlSource", "MemorySource", "Source"]

# Files are read in chunks of this size (a few hundred records of 384-d JSON vectors).
_CHUNK = 1 << 20


class Source(Protocol):
    def next_batch(self, max_records: int) -> list[Record] | None: ...

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
    ):
        self._files = [
            (topic, Path(p)) for topic, p in (("docs", docs), ("events", events)) if p is not None
        ]
        for _, path in self._files:
            if not path.is_file():
                raise FileNotFoundError(f"no such file: {path}")
        self.max_line_bytes = max_line_bytes
        self._lines = self._read()
        self._position = {"file": None, "line": 0}
        self.bytes_total = sum(path.stat().st_size for _, path in self._files)
        self.bytes_read = 0

    def _read(self) -> Iterator[Record]:
        # Reads in large chunks and splits lines itself: per-line readline() costs more than the
        # rest of a record's handling. A line longer than the limit is cut at limit + 1 bytes and
        # the rest skipped, so memory stays bounded whatever the input.
        limit = self.max_line_bytes
        for topic, path in self._files:
            name = path.name
            number = 0
            with path.open("rb") as f:
                tail = b""
                skipping = False
                while True:
                    chunk = f.read(_CHUNK)
                    self.bytes_read += len(chunk)
                    if not chunk:
                        break
                    lines = (tail + chunk).split(b"\n")
                    tail = lines.pop()
                    for line in lines:
                        if skipping:
                            skipping = False  # the end of an oversize line
                            continue
                        number += 1
                        if len(line) > limit:
                            line = line[: limit + 1]
                        self._position = {"file": str(path), "line": number}
                        if line.strip():
                            yield Record(
                                topic, line.rstrip(b"\r"), position={"file": name, "line": number}
                            )
                    if len(tail) > limit:
                        if not skipping:
                            number += 1
                            self._position = {"file": str(path), "line": number}
                            yield Record(
                                topic, tail[: limit + 1], position={"file": name, "line": number}
                            )
                        skipping = True
                        tail = b""
                if tail and not skipping:
                    number += 1
                    self._position = {"file": str(path), "line": number}
                    if tail.strip():
                        yield Record(
                            topic, tail.rstrip(b"\r"), position={"file": name, "line": number}
                        )

    def next_batch(self, max_records: int) -> list[Record] | None:
        batch = []
        for record in self._lines:
            batch.append(record)
            if len(batch) >= max_records:
                break
        return batch or None

    def position(self) -> dict:
        return dict(self._position)

    def close(self) -> None:
        self._lines.close()
