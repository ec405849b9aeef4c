"""Sinks: where updates and dead letters go. JSONL files and memory here; Kafka in ``stream_nudge.kafka``.

One interface: ``write(output)`` takes an engine :class:`~stream_nudge.engine.Output` (updates and
tombstones in order, dead letters), ``flush()`` makes everything written durable, ``close()``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import orjson

from stream_nudge.engine import Output
from stream_nudge.messages import encode_dead_letter

__all__ = ["JsonlSink", "MemorySink", "Sink"]


class Sink(Protocol):
    def write(self, output: Output) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class MemorySink:
    """Keeps everything in lists (for tests and the demo)."""

    def __init__(self):
        self.messages: list[tuple[str, bytes | None, bytes, int]] = []
        self.dead_letters = []

    def write(self, output: Output) -> None:
        self.messages.extend(output.messages)
        self.dead_letters.extend(output.dead_letters)

    def latest(self) -> dict[str, dict | None]:
        """The updates reduced by key, as a compacted topic would keep them (None: deleted)."""
        state: dict[str, dict | None] = {}
        for key, value, _, _ in self.messages:
            state[key] = None if value is None else orjson.loads(value)
        return state

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlSink:
    """Updates (tombstones as ``{"id": ..., "deleted": true}``) to one file, dead letters to another."""

    def __init__(self, out: str | os.PathLike, dead_letter: str | os.PathLike | None = None):
        # Held open for the sink's life and closed by close(), like any long-lived writer.
        self._out = Path(out).open("wb")  # noqa: SIM115
        self._dead = Path(dead_letter).open("wb") if dead_letter is not None else None  # noqa: SIM115

    def write(self, output: Output) -> None:
        lines = [line for _, _, line, _ in output.messages]
        if lines:
            self._out.write(b"\n".join(lines) + b"\n")
        if self._dead is not None and output.dead_letters:
            self._dead.write(b"\n".join(encode_dead_letter(d) for d in output.dead_letters) + b"\n")

    def flush(self) -> None:
        for f in (self._out, self._dead):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())

    def close(self) -> None:
        self.flush()
        for f in (self._out, self._dead):
            if f is not None:
                f.close()
