"""What the engine remembers of each recent query id: its split and the documents it named.

- **A query belongs to one split.** Its first event fixes it (given, or by the stable hash); a
  later event of that query id with the other split is a conflict, which the engine dead-letters:
  counted in both, a query would train the documents it then validates.
- **Re-delivered events count once.** Upstream producers are at-least-once, so the same event
  may arrive twice. The paper, and ``fine_tune``, treat a query's relevant documents as a set; the
  stream does too: a (query id, document id) pair already applied changes nothing (a producer
  that means "more" says so with ``weight``).

Both read one dict entry per query id, looked up once per event: a stable hash of every pair
(as a first version kept) cost several times more per event. Memory stays
bounded by two generations: when the current one holds ``capacity // 2`` query ids (checked
between batches), it becomes the previous one and the oldest is dropped, so at least the latest
``capacity // 2`` query ids are remembered, and at most ``capacity`` plus a batch (about 250
bytes each: the id, its split, its documents' ids). A re-delivery older than that counts again,
and a conflict older than that goes unnoticed. The memory is checkpointed, by id.
"""

from __future__ import annotations

__all__ = ["QueryMemory"]


class QueryMemory:
    """Recent query ids -> (split, the document ids they named). See the module docstring."""

    __slots__ = ("capacity", "current", "generation", "journal", "previous")

    def __init__(self, capacity: int):
        if capacity < 2:
            raise ValueError(f"capacity: must be >= 2, got {capacity}")
        self.capacity = capacity
        self.current: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.previous: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.generation = 0  # how many times the current generation became the previous one
        # The changelog's bookkeeping (engine/changelog.py): how many journal records each
        # generation has there, kept with the memory so that a writer on an engine restored
        # from the changelog goes on numbering (the restore counts them; not checkpointed).
        self.journal: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.current) + len(self.previous)

    def get(self, query_id: str) -> tuple[str, tuple[str, ...]] | None:
        entry = self.current.get(query_id)
        return entry if entry is not None else self.previous.get(query_id)

    def make_room(self) -> None:
        """Between batches: start a new generation if the current one is full. (Not during one,
        so that the ingest loop may hold the current dict.)"""
        if len(self.current) >= self.capacity // 2:
            self.previous = self.current
            self.current = {}
            self.generation += 1

    def to_state(self) -> dict:
        """JSON-able: both generations, oldest first."""
        return {
            "queries": [
                [[q, split, list(docs)] for q, (split, docs) in generation.items()]
                for generation in (self.previous, self.current)
            ],
            "query_generation": self.generation,
        }

    @classmethod
    def from_state(cls, capacity: int, meta: dict) -> QueryMemory:
        memory = cls(capacity)
        previous, current = meta.get("queries", ([], []))
        memory.previous = {q: (split, tuple(docs)) for q, split, docs in previous}
        memory.current = {q: (split, tuple(docs)) for q, split, docs in current}
        memory.generation = int(meta.get("query_generation", 0))
        return memory
