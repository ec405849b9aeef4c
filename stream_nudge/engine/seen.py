"""Re-delivered events: each (query id, document id) pair counts once.

Upstream producers are at-least-once, so the same relevance event may arrive twice. The paper, and
``fine_tune``, treat a query's relevant documents as a set; the stream does too: a pair already
applied is a duplicate and changes nothing (a producer that means "more" says so with ``weight``).

Remembering every pair forever would grow without bound, so :class:`SeenPairs` keeps two
generations of 64-bit keys: when the current one holds half the capacity, it becomes the previous
one and the oldest generation is dropped. At least the latest ``capacity // 2`` distinct pairs, and
at most ``capacity``, are remembered (about 75 bytes each: an 8-byte key in a set, measured); a duplicate that
arrives later than that counts again. Keys are BLAKE2b hashes of the pair, stable across processes
and restarts (they are checkpointed); two distinct pairs share a key with probability
``capacity / 2**64`` per event, one in 10**13 at the default capacity.
"""

from __future__ import annotations

from hashlib import blake2b

import numpy as np

__all__ = ["SeenPairs", "pair_key"]


def pair_key(query_id: str, doc_id: str) -> bytes:
    """A stable 8-byte key of the pair: BLAKE2b of the query id's length, the query id and the
    document id (the length keeps ``("a:", "b")`` and ``("a", ":b")`` apart)."""
    data = f"{len(query_id)}:{query_id}{doc_id}".encode("utf-8", "surrogatepass")
    return blake2b(data, digest_size=8).digest()


class SeenPairs:
    """The (query id, document id) pairs applied lately (see the module docstring)."""

    __slots__ = ("capacity", "current", "previous")

    def __init__(self, capacity: int):
        if capacity < 2:
            raise ValueError(
                f"capacity: must be >= 2 (0 disables the filter upstream), got {capacity}"
            )
        self.capacity = capacity
        self.current: set[bytes] = set()
        self.previous: set[bytes] = set()

    def __len__(self) -> int:
        return len(self.current) + len(self.previous)

    def fresh(self, query_id: str, doc_ids: tuple[str, ...]) -> tuple[str, ...]:
        """The ``doc_ids`` (distinct) not yet seen with ``query_id``, in order; they are remembered
        from now on. ``doc_ids`` itself when all are new (the common case costs one hash)."""
        if len(doc_ids) == 1:
            key = pair_key(query_id, doc_ids[0])
            if key in self.current or key in self.previous:
                return ()
            self._add(key)
            return doc_ids
        out = []
        for doc_id in doc_ids:
            key = pair_key(query_id, doc_id)
            if key not in self.current and key not in self.previous:
                self._add(key)
                out.append(doc_id)
        return doc_ids if len(out) == len(doc_ids) else tuple(out)

    def _add(self, key: bytes) -> None:
        if len(self.current) >= self.capacity // 2:
            self.previous = self.current
            self.current = set()
        self.current.add(key)

    def to_state(self) -> dict[str, np.ndarray]:
        return {
            "seen_current": np.frombuffer(b"".join(self.current), dtype="<u8").copy(),
            "seen_previous": np.frombuffer(b"".join(self.previous), dtype="<u8").copy(),
        }

    @classmethod
    def from_state(cls, capacity: int, arrays: dict[str, np.ndarray]) -> SeenPairs:
        seen = cls(capacity)
        for name in ("current", "previous"):
            keys = np.asarray(arrays.get(f"seen_{name}", ()), dtype="<u8").tobytes()
            setattr(seen, name, {keys[i : i + 8] for i in range(0, len(keys), 8)})
        return seen


class QuerySplits:
    """Each recent query id's split, so that a query belongs to one split.

    A query id's first event fixes its split (given, or by the stable hash); a later event of that
    query with the other split is a conflict (the caller dead-letters it): counted in both, a
    query would train the documents it then validates. Two generations, as :class:`SeenPairs`:
    at least the latest ``capacity // 2`` query ids are remembered (checkpointed by id).
    """

    __slots__ = ("capacity", "current", "previous")

    def __init__(self, capacity: int):
        self.capacity = max(capacity, 2)
        self.current: dict[str, str] = {}
        self.previous: dict[str, str] = {}

    def get(self, query_id: str) -> str | None:
        split = self.current.get(query_id)
        if split is None:
            split = self.previous.get(query_id)
        return split

    def put(self, query_id: str, split: str) -> None:
        if len(self.current) >= self.capacity // 2:
            self.previous = self.current
            self.current = {}
        self.current[query_id] = split

    def to_state(self) -> dict:
        return {"query_splits": [list(self.previous.items()), list(self.current.items())]}

    @classmethod
    def from_state(cls, capacity: int, meta: dict) -> QuerySplits:
        splits = cls(capacity)
        previous, current = meta.get("query_splits", ([], []))
        splits.previous = {q: s for q, s in previous}
        splits.current = {q: s for q, s in current}
        return splits
