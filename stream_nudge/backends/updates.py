"""The updates stream as a search backend reads it: decoding, and one batch's net changes.

A record of the updates topic (or a line of an updates JSONL file) is a :class:`Change`: the
document id, its generation, and the embedding, or None for a deletion (a Kafka tombstone, whose
generation comes in its ``generation`` header, or the JSONL line ``{"id": ..., "deleted": true,
"generation": ...}``). Anything else is a :class:`~stream_nudge.messages.DeadLetter` with its
reason; decoding never raises.

What a backend must hold is a function of the set of changes seen, not of their order: for each
id, the change with the highest generation, and a row exactly when that change is not a deletion
(the engine's generation is one counter for updates and deletions, so it orders them). A batch
therefore reduces to at most one change per id (:func:`net_changes`), and replaying, repeating or
reordering records cannot move a row back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import orjson
import simdjson

from stream_nudge.messages import (
    DeadLetter,
    Record,
    _from_base64,
    _from_lists,
    _simdjson_parser,
)

__all__ = ["Change", "Net", "decode_update", "net_changes"]

#: A generation header or field beyond this is refused (a signed 64-bit column holds it).
_MAX_GENERATION = 2**63 - 1
#: The fields an update has (what `run` writes); others send it the reference path.
_FAST_KEYS = frozenset(("id", "embedding", "method", "gamma", "generation", "similarity"))


class Change(NamedTuple):
    """One document's change. ``vector`` None: deleted. ``generation`` None: a deletion that
    came without one (a tombstone someone else wrote), which deletes whatever is there."""

    id: str
    generation: int | None
    vector: np.ndarray | None
    similarity: str | None = None


def _reject(record: Record, reason: str, detail: str) -> DeadLetter:
    return DeadLetter(reason, detail, record)


def _generation(value, record: Record) -> int | DeadLetter:
    if isinstance(value, bool) or not isinstance(value, int):
        return _reject(record, "wrong_type", f"generation must be a whole number, got {value!r}")
    if not 0 <= value <= _MAX_GENERATION:
        return _reject(record, "wrong_type", f"generation {value} is outside 0..2^63-1")
    return value


def _header(record: Record, name: str) -> bytes | None:
    for key, value in record.headers or ():
        if key == name:
            return value
    return None


def decode_update(record: Record, dimension: int | None) -> Change | DeadLetter:
    """The :class:`Change` a record of the updates stream says, or why it is not one.

    ``dimension``: the backend's (None: not known yet; any length is taken).
    """
    key = None
    if record.key is not None:
        try:
            key = record.key.decode("utf-8")
        except UnicodeDecodeError:
            return _reject(record, "invalid_utf8", "the key is not UTF-8")
    if record.value is None:
        if key is None:
            return _reject(record, "missing_field", "a tombstone without a key names no document")
        raw = _header(record, "generation")
        if raw is None:
            return Change(key, None, None)
        try:
            number = int(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return _reject(record, "wrong_type", f"generation header {raw[:40]!r} is not a number")
        generation = _generation(number, record)
        if isinstance(generation, DeadLetter):
            return generation
        return Change(key, generation, None)
    fast = _fast_update(record.value, dimension)
    if fast is not None:
        doc_id, generation, similarity, vector = fast
        if key is None or key == doc_id:
            return Change(doc_id, generation, vector, similarity)
    try:
        obj = orjson.loads(record.value)
    except orjson.JSONDecodeError as exc:
        reason = "invalid_utf8" if "utf-8" in str(exc).lower() else "invalid_json"
        return _reject(record, reason, f"not JSON: {exc}")
    if not isinstance(obj, dict):
        return _reject(record, "not_an_object", f"a JSON {type(obj).__name__}, not an object")
    doc_id = obj.get("id")
    if not isinstance(doc_id, str) or not doc_id:
        what = "missing" if doc_id is None else f"{doc_id!r}"
        return _reject(record, "missing_field" if doc_id is None else "wrong_type", f"id {what}")
    if key is not None and key != doc_id:
        return _reject(record, "ambiguous", f"the key {key!r} and the id {doc_id!r} differ")
    if "generation" not in obj:
        return _reject(record, "missing_field", "generation missing")
    generation = _generation(obj["generation"], record)
    if isinstance(generation, DeadLetter):
        return generation
    if obj.get("deleted") is True:
        return Change(doc_id, generation, None)
    similarity = obj.get("similarity")
    if similarity is not None and similarity not in ("cosine", "dot"):
        return _reject(record, "wrong_type", f"similarity {similarity!r}: cosine or dot")
    vector = _vector(obj, record, dimension)
    if isinstance(vector, DeadLetter):
        return vector
    return Change(doc_id, generation, vector, similarity)


def _fast_update(value: bytes, dimension: int | None):
    """``(id, generation, similarity, vector)`` of a plain update whose embedding is a JSON array
    of numbers, read with simdjson (its vector straight into float64, no Python float per
    number); None for anything else, which the reference path (orjson) then decides, as the
    engine's batch decoder does (:func:`stream_nudge.messages._simdjson_record`): more than one
    ``[`` (simdjson would flatten nested arrays), repeated keys, a key it does not know, a value
    of another type, a vector that is not finite in float32."""
    start = value.find(b"[")
    if start < 0 or value.find(b"[", start + 1) >= 0 or not value.startswith(b"{"):
        return None
    try:
        obj = _simdjson_parser().parse(value)
        if obj.__class__ is not simdjson.Object:
            return None
        keys = list(obj.keys())
        if len(set(keys)) != len(keys) or not _FAST_KEYS.issuperset(keys):
            return None
        if "id" not in keys or "generation" not in keys or "embedding" not in keys:
            return None
        doc_id, generation = obj["id"], obj["generation"]
        similarity = obj["similarity"] if "similarity" in keys else None
        if doc_id.__class__ is not str or not doc_id or generation.__class__ is not int:
            return None
        if not 0 <= generation <= _MAX_GENERATION or similarity not in (None, "cosine", "dot"):
            return None
        vector = obj["embedding"]
        if vector.__class__ is not simdjson.Array or not len(vector):
            return None
        if dimension is not None and len(vector) != dimension:
            return None
        doubles = vector.as_buffer(of_type="d")
    except (ValueError, RuntimeError, TypeError, KeyError):  # not JSON, or not numbers
        return None
    with np.errstate(over="ignore"):  # beyond float32: inf, left to the reference path
        out = np.frombuffer(doubles, dtype=np.float64).astype(np.float32)
    if not np.isfinite(out).all():
        return None
    return doc_id, generation, similarity, out


def _vector(obj: dict, record: Record, dimension: int | None) -> np.ndarray | DeadLetter:
    as_json, as_b64 = obj.get("embedding"), obj.get("embedding_b64")
    if as_json is not None and as_b64 is not None:
        return _reject(record, "ambiguous", "both embedding and embedding_b64")
    if as_json is None and as_b64 is None:
        return _reject(record, "missing_field", "embedding (or embedding_b64) missing")
    if as_json is not None:
        if not isinstance(as_json, list) or not as_json:
            return _reject(record, "wrong_type", "embedding must be a non-empty array of numbers")
        dim = dimension or len(as_json)
        with np.errstate(over="ignore"):  # beyond float32: inf, refused below
            vectors = _from_lists([as_json], dim)
    else:
        if not isinstance(as_b64, str) or not as_b64:
            return _reject(record, "wrong_type", "embedding_b64 must be a non-empty string")
        dim = dimension or (len(as_b64) * 3 // 4) // 4
        vectors = _from_base64([as_b64], dim)
        if vectors is None and dimension is None:
            return _reject(record, "bad_base64", "embedding_b64 is not base64 of float32")
    if vectors is None:
        return _reject(
            record, "wrong_dimension", f"the embedding is not {dim} numbers (the backend's)"
        )
    vector = np.array(vectors[0], dtype=np.float32)  # a copy: never a view of the input
    if not np.isfinite(vector).all():
        return _reject(record, "non_finite", "NaN, Inf or a number beyond float32 in the embedding")
    return vector


@dataclass
class Net:
    """A batch's net changes: at most one per id, the one with the highest generation."""

    changes: dict[str, Change] = field(default_factory=dict)

    def add(self, change: Change) -> None:
        """Keep ``change`` unless this batch has a later one for its id. A change without a
        generation (a foreign tombstone) counts as later than what came before it and earlier
        than what comes after it."""
        now = self.changes.get(change.id)
        if (
            now is None
            or now.generation is None
            or change.generation is None
            or change.generation > now.generation
        ):
            self.changes[change.id] = change

    def upserts(self) -> list[Change]:
        return [c for c in self.changes.values() if c.vector is not None]

    def deletes(self) -> list[Change]:
        return [c for c in self.changes.values() if c.vector is None]

    def __len__(self) -> int:
        return len(self.changes)


def net_changes(changes) -> Net:
    """:class:`Net` of ``changes``, in order.

    >>> a = np.ones(2, np.float32)
    >>> net = net_changes([Change("d", 3, a), Change("d", 2, None), Change("e", 1, None)])
    >>> [(c.id, c.generation, c.vector is None) for c in net.changes.values()]
    [('d', 3, False), ('e', 1, True)]
    """
    net = Net()
    for change in changes:
        net.add(change)
    return net
