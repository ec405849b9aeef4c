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
        limit = self.max_line_bytes
        for topic, path in self._files:
            with path.open("rb") as f:
                number = 0
                while True:
                    line = f.readline(limit + 1)
                    if not line:
                        break
                    number += 1
                    self.bytes_read += len(line)
                    if len(line) > limit and not line.endswith(b"\n"):
                        # Oversize: skip the rest of the line without holding it.
                        while True:
                            rest = f.readline(1 << 16)
                            self.bytes_read += len(rest)
                            if not rest or rest.endswith(b"\n"):
                                break
                    value = line.rstrip(b"\r\n")
                    self._position = {"file": str(path), "line": number}
                    if not value.strip():
                        continue
                    yield Record(topic, value, position={"file": path.name, "line": number})

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
