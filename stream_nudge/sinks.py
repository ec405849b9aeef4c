"""Sinks: where updates and dead letters go. JSONL files and memory here; Kafka in ``stream_nudge.kafka``.

One interface: ``write(changes)`` takes what the engine produced
(:class:`~stream_nudge.engine.Changes`: tombstones and updates, dead letters) and encodes it,
``flush()`` makes everything written durable, ``close()``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import orjson

from stream_nudge.engine import Changes
from stream_nudge.messages import OutputMessage, encode_dead_letter, encode_output

__all__ = ["DiscardSink", "JsonlSink", "MemorySink", "Sink"]


class Sink(Protocol):
    def write(self, changes: Changes) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class DiscardSink:
    """Writes nothing: for runs whose results are read from the engine (``evaluate``)."""

    def write(self, changes: Changes) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class MemorySink:
    """Keeps everything in lists (for tests and the demo)."""

    def __init__(self):
        self.messages: list[OutputMessage] = []
        self.dead_letters = []

    def write(self, changes: Changes) -> None:
        self.messages.extend(encode_output(changes.tombstones, changes.updates))
        self.dead_letters.extend(changes.dead_letters)

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

    def write(self, changes: Changes) -> None:
        lines = [m.line for m in encode_output(changes.tombstones, changes.updates)]
        if lines:
            self._out.write(b"\n".join(lines) + b"\n")
        if self._dead is not None and changes.dead_letters:
            letters = changes.dead_letters
            self._dead.write(b"\n".join(encode_dead_letter(d) for d in letters) + b"\n")

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
