"""What a search backend does for ``stream-nudge sink``, and how it fails."""

from __future__ import annotations

from typing import Protocol

from stream_nudge.backends.updates import Net

__all__ = ["Backend", "BackendError", "BackendUnavailable", "Offsets"]

#: ``(source, partition) -> next offset``: a topic's partitions, or a file (partition 0, the
#: next line's number).
Offsets = dict[tuple[str, int], int]


class BackendError(Exception):
    """What is there cannot work (a missing extension or table, another dimension, a bad
    name): retrying would fail the same way, so the sink stops with this message."""


class BackendUnavailable(BackendError):
    """The backend could not be reached or went away: the sink retries with backoff and resumes
    from the offsets the backend holds, so nothing is skipped."""


class Backend(Protocol):
    #: For logs and errors: where the rows go (never a password).
    name: str
    #: The vectors' dimension, once known (from the existing table or the first update).
    dimension: int | None

    def open(self) -> None:
        """Connect; check the tables (or create them when asked)."""

    def offsets(self) -> Offsets:
        """The offsets stored with the rows: where to resume."""

    def write(self, net: Net, offsets: Offsets) -> None:
        """Apply one batch's net changes and store ``offsets`` with them: all or nothing, or
        (LanceDB) in an order that makes applying the batch again harmless."""

    def caught_up(self) -> None:
        """The sink has written all there is for now: a moment for work that should not slow a
        first load (PostgreSQL builds the vector index of a table it created)."""

    def rows(self) -> int:
        """How many documents the backend holds."""

    def close(self) -> None: ...
