"""Re-delivered events: each (query id, document id) pair counts once.

Upstream producers are at-least-once, so the same relevance event may arrive twice. The paper, and
``fine_tune``, treat a query's relevant documents as a set; the stream does too: a pair already
applied is a duplicate and changes nothing (a producer that means "more" says so with ``weight``).

Remembering every pair forever would grow without bound, so :class:`SeenPairs` keeps two
generations of 64-bit keys: when the current one holds half the capacity, it becomes the previous
one and the oldest generation is dropped. At least the latest ``capacity // 2`` distinct pairs, and
at most ``capacity``, are remembered (about 64 bytes each: a Python int in a set); a duplicate that
arrives later than that counts again. Keys are BLAKE2b hashes of the pair, stable across processes
and restarts (they are checkpointed); two distinct pairs share a key with probability
``capacity / 2**64`` per event, one in 10**13 at the default capacity.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["SeenPairs", "pair_key"]


def pair_key(query_id: str, doc_id: str) -> int:
    """A stable 64-bit key of the pair: BLAKE2b of the query id's length, the query id and the
    document id (the length keeps ``("a:", "b")`` and ``("a", ":b")`` apart)."""
    query = query_id.encode("utf-8", "surrogatepass")
    data = b"%d:%b%b" % (len(query), query, doc_id.encode("utf-8", "surrogatepass"))
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class SeenPairs:
    """The (query id, document id) pairs applied lately (see the module docstring)."""

    __slots__ = ("capacity", "current", "previous")

    def __init__(self, capacity: int):
        if capacity < 2:
            raise ValueError(
                f"capacity: must be >= 2 (0 disables the filter upstream), got {capacity}"
            )
        self.capacity = capacity
        self.current: set[int] = set()
        self.previous: set[int] = set()

    def __len__(self) -> int:
        return len(self.current) + len(self.previous)

    def fresh(self, query_id: str, doc_ids: list[str]) -> list[str]:
        """The ``doc_ids`` not yet seen with ``query_id``, in order and without repeats; they are
        remembered from now on."""
        out = []
        for doc_id in doc_ids:
            key = pair_key(query_id, doc_id)
            if key in self.current or key in self.previous:
                continue
            if len(self.current) >= self.capacity // 2:
                self.previous = self.current
                self.current = set()
            self.current.add(key)
            out.append(doc_id)
        return out

    def to_state(self) -> dict[str, np.ndarray]:
        return {
            "seen_current": np.fromiter(self.current, dtype=np.uint64, count=len(self.current)),
            "seen_previous": np.fromiter(self.previous, dtype=np.uint64, count=len(self.previous)),
        }

    @classmethod
    def from_state(cls, capacity: int, arrays: dict[str, np.ndarray]) -> SeenPairs:
        seen = cls(capacity)
        seen.current = set(np.asarray(arrays.get("seen_current", ()), np.uint64).tolist())
        seen.previous = set(np.asarray(arrays.get("seen_previous", ()), np.uint64).tolist())
        return seen
