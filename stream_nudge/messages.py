"""The message contract: decoding input records, encoding updates and dead letters.

Input is JSON (UTF-8), one object per record. Vectors come as a JSON array of numbers or as
base64 of little-endian float32; both are accepted everywhere. Anything that does not fit the
contract becomes a :class:`DeadLetter` with a reason from :data:`REASONS`; decoding never raises.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import orjson
import pybase64
import simdjson

__all__ = [
    "REASONS",
    "DeadLetter",
    "DecodedBatch",
    "Decoder",
    "DocDelete",
    "DocUpsert",
    "Event",
    "OutputMessage",
    "Record",
    "Tombstone",
    "Updates",
    "encode_dead_letter",
    "encode_output",
    "encode_tombstone",
    "encode_update",
    "is_validation",
    "query_hash",
    "validation_below",
]

#: Why a record went to dead letters.
REASONS = (
    "oversize",  # longer than limits.max_message_bytes
    "invalid_utf8",  # not UTF-8 text
    "invalid_json",  # not JSON
    "not_an_object",  # JSON, but not an object
    "missing_field",  # a required key is absent
    "wrong_type",  # a key holds the wrong kind of value
    "unknown_op",  # a document op other than upsert / delete
    "bad_base64",  # an *_b64 vector that is not base64 of float32
    "wrong_dimension",  # a vector of another length than the stream's
    "absurd_size",  # a vector or doc_ids list beyond the limits
    "non_finite",  # NaN or Inf in a vector (or beyond float32)
    "zero_vector",  # a document embedding of length zero
    "bad_weight",  # a weight that is not a finite number within limits
    "bad_split",  # a split other than train / validation
    "ambiguous",  # two fields that say one thing: doc_id and doc_ids, a vector as JSON and base64
    "split_conflict",  # a query id sent as train and as validation: the later event
    "unknown_field",  # with contract.strict, a field the contract does not name (a typo: "wieght")
    "pending_overflow",  # an event for an unseen document when the pending store is full
    "pending_expired",  # a click whose document did not arrive within pending.max_age_*
    "pending_at_end",  # a click still waiting for its document when a replay ended
)

# The fields the contract names. Others are ignored, or with ``strict`` dead letters.
KNOWN_FIELDS = {
    "docs": frozenset(("op", "id", "embedding", "embedding_b64", "ts")),
    "events": frozenset(
        ("query_id", "query_embedding", "query_embedding_b64", "doc_id", "doc_ids")
        + ("weight", "split", "ts")
    ),
}

# The batch path converts vectors this many at a time: enough to spread the cost of a call, few
# enough that the parsed numbers are still in cache when converted.
_GROUP = 64

# Dead letters keep at most this much of an oversize record: enough to find it, not to store it.
_RAW_KEEP = 65_536


@dataclass(slots=True)
class Record:
    """One input message: from a JSONL line or a Kafka record."""

    topic: str  # "docs" or "events"
    value: bytes | None
    position: Any = None  # where it came from: (file, line) or (partition, offset)
    timestamp: float | None = None  # the broker's timestamp, in seconds, if any
    key: bytes | None = None
    headers: list[tuple[str, bytes]] | None = None  # a Kafka record's headers, if any


@dataclass(slots=True)
class DocUpsert:
    id: str
    vector: np.ndarray  # float32, as sent (not yet normalised)


@dataclass(slots=True)
class DocDelete:
    id: str


@dataclass(slots=True)
class Event:
    query_id: str
    vector: np.ndarray  # float32, as sent
    doc_ids: tuple[str, ...]
    weight: float
    split: str | None  # "train", "validation", or None: decided by a stable hash of query_id
    ts: float | None


class DecodedBatch(NamedTuple):
    """A batch of records decoded, in order, as the engine takes it.

    ``items[i]`` is what ``records[i]`` decoded to: a :class:`DocUpsert`, a :class:`DocDelete`, a
    :class:`DeadLetter`, or an event as the plain tuple ``(query_id, doc_ids, weight, split, ts)``
    (the fields of :class:`Event` but its vector) whose query vector is ``vectors[i]``; rows of
    the other items hold anything. An event is a tuple, not an object: a tuple costs a tenth of
    a named one to build, once per event on the hottest path, and the engine gathers a batch's
    click vectors from the one array at once.
    """

    items: list
    vectors: np.ndarray  # float32 [len(records), dimension]


@dataclass(slots=True)
class DeadLetter:
    reason: str
    detail: str
    record: Record


class Decoder:
    """Turns records into documents, events or dead letters, checking the contract.

    The vector dimension is fixed by ``dimension`` or by the first valid vector seen.
    """

    def __init__(
        self,
        dimension: int | None = None,
        max_message_bytes: int = 1 << 20,
        max_dimension: int = 65_536,
        max_doc_ids: int = 1000,
        max_weight: float = 1e6,
        strict: bool = False,
    ):
        self.dimension = dimension
        # Where the stream's dimension came from: the first valid vector's record position.
        self.dimension_from = None if dimension is None else "the configuration"
        # With strict, a field the contract does not name makes the record a dead letter.
        self.strict = strict
        self.max_message_bytes = max_message_bytes
        self.max_dimension = max_dimension
        self.max_doc_ids = max_doc_ids
        self.max_weight = max_weight
        # The longest base64 text a vector of max_dimension floats can take.
        self._b64_limit = 4 * ((4 * max_dimension + 2) // 3) + 4

    @classmethod
    def for_config(cls, config) -> Decoder:
        """The decoder a :class:`~stream_nudge.config.Config` describes (dimension and limits)."""
        limits = config.limits
        return cls(
            config.dimension,
            limits.max_message_bytes,
            limits.max_dimension,
            limits.max_doc_ids,
            limits.max_weight,
            config.contract.strict,
        )

    def vector(self, obj: dict, name: str) -> np.ndarray:
        """``obj[name]`` (numbers) or ``obj[name + "_b64"]``, checked as in every message.

        For inputs beside the streams (test queries); ValueError says what is wrong.
        """
        try:
            with np.errstate(over="ignore"):
                return self._vector(obj, name)
        except _Reject as reject:
            raise ValueError(reject.detail) from None

    def decode(self, record: Record) -> DocUpsert | DocDelete | Event | DeadLetter:
        return self.decode_batch([record])[0]

    def decode_batch(
        self, records: list[Record]
    ) -> list[DocUpsert | DocDelete | Event | DeadLetter]:
        """Decode records in order (the first valid vector may fix the dimension for the rest).

        The result is what decoding each record on its own gives. Once the dimension is known,
        records of the common shapes are checked and their vectors converted a batch at a time
        (see :func:`_decode_known`); vectors of one batch may then be rows of one array.
        """
        items, vectors = self.decode_rows(records)
        for i, item in enumerate(items):
            if item.__class__ is tuple:
                items[i] = Event(item[0], vectors[i], item[1], item[2], item[3], item[4])
        return items

    def decode_rows(self, records: list[Record]) -> DecodedBatch:
        """:meth:`decode_batch` as the engine takes it (see :class:`DecodedBatch`)."""
        # One errstate for the batch: values beyond float32 become inf (and are rejected as
        # non-finite) without a warning per vector.
        with np.errstate(over="ignore"):
            out = []
            start = 0
            while self.dimension is None and start < len(records):
                out.append(self.decode_one(records[start]))
                if self.dimension is not None:
                    self.dimension_from = _where(records[start])
                start += 1
            vectors = np.empty((len(records), self.dimension or 0), dtype=np.float32)
            if start < len(records):
                part = records[start:] if start else records
                out.extend(_decode_known(self, part, vectors[start:]))
        # Events decoded on their own come as objects.
        for i, item in enumerate(out):
            if item.__class__ is Event:
                vectors[i] = item.vector
                out[i] = (item.query_id, item.doc_ids, item.weight, item.split, item.ts)
        return DecodedBatch(out, vectors)

    def decode_one(self, record: Record, obj: Any = None):
        """The reference: one record, every check in the contract's order (``obj``: parsed)."""
        try:
            if obj is None:
                obj = self._parse(record)
            if self.strict:
                unknown = obj.keys() - KNOWN_FIELDS[record.topic]
                if unknown:
                    names = ", ".join(sorted(unknown))
                    raise _Reject("unknown_field", f"fields the contract does not name: {names}")
            if record.topic == "docs":
                return self._document(obj)
            return self._event(obj)
        except _Reject as reject:
            return DeadLetter(reject.reason, reject.detail, record)

    def _parse(self, record: Record) -> dict:
        value = record.value
        if value is None:
            raise _Reject("wrong_type", "empty (null) message")
        if len(value) > self.max_message_bytes:
            raise _Reject("oversize", f"{len(value)} bytes > limits.max_message_bytes")
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            try:
                bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise _Reject("invalid_utf8", "not UTF-8") from None
            # orjson counts lines within the message, always line 1 of a JSONL line: the
            # column says where, the record's position which line of the file.
            where = f"at column {exc.colno}" if exc.lineno == 1 else f"at {exc.lineno}:{exc.colno}"
            raise _Reject("invalid_json", f"{exc.msg} {where}") from None
        if not isinstance(obj, dict):
            raise _Reject("not_an_object", f"a JSON {type(obj).__name__}, not an object")
        return obj

    def _document(self, obj: dict):
        doc_id, op = _document_fields(obj.get("id", _MISSING), obj.get("op", "upsert"))
        if op == "delete":
            return DocDelete(doc_id)
        vector = self._vector(obj, "embedding")
        if not np.any(vector):
            raise _Reject("zero_vector", "a document embedding must not be all zeros")
        return DocUpsert(doc_id, vector)

    def _event(self, obj: dict):
        if "doc_id" in obj and "doc_ids" in obj:
            raise _Reject("ambiguous", "both doc_id and doc_ids: send one of them")
        query_id, weight, split, ts = _event_scalars(
            obj.get("query_id", _MISSING),
            obj.get("weight", 1.0),
            obj.get("split"),
            obj.get("ts"),
            self.max_weight,
        )
        vector = self._vector(obj, "query_embedding")
        if "doc_ids" in obj:
            ids = obj["doc_ids"]
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise _Reject("wrong_type", "doc_ids must be a list of strings")
            if not ids:
                raise _Reject("missing_field", "doc_ids is empty")
            if len(ids) > self.max_doc_ids:
                raise _Reject("absurd_size", f"{len(ids)} doc_ids > limits.max_doc_ids")
            doc_ids = tuple(dict.fromkeys(ids))
        else:
            doc_ids = (_text_value(obj.get("doc_id", _MISSING), "doc_id"),)
        return Event(query_id, vector, doc_ids, weight, split, ts)

    def _vector(self, obj: dict, name: str) -> np.ndarray:
        if name in obj and name + "_b64" in obj:
            raise _Reject("ambiguous", f"both {name} and {name}_b64: send one of them")
        raw = obj.get(name)
        if raw is not None:
            if raw.__class__ is not list:
                raise _Reject("wrong_type", f"{name} must be an array of numbers")
            if not _numbers_only(raw):
                # numpy would read "0.8" and true as numbers; the contract says numbers.
                raise _Reject(
                    "wrong_type",
                    f"{name} must be an array of numbers (no strings, booleans or nulls)",
                )
            if len(raw) > self.max_dimension:
                raise _Reject(
                    "absurd_size", f"{name} has {len(raw)} numbers > limits.max_dimension"
                )
            try:
                vector = np.array(raw, dtype=np.float32)
            except (TypeError, ValueError):
                raise _Reject("wrong_type", f"{name} must be an array of numbers") from None
            if vector.ndim != 1:
                raise _Reject("wrong_type", f"{name} must be a flat array of numbers")
        else:
            raw = obj.get(name + "_b64")
            if raw is None:
                raise _Reject("missing_field", f"{name} (or {name}_b64) is required")
            if raw.__class__ is not str:
                raise _Reject("wrong_type", f"{name}_b64 must be a base64 string")
            if len(raw) > self._b64_limit:
                raise _Reject(
                    "absurd_size", f"{name}_b64 is longer than limits.max_dimension floats"
                )
            try:
                data = _strict_b64decode(raw)
            except (binascii.Error, ValueError):
                raise _Reject("bad_base64", f"{name}_b64 is not valid base64") from None
            if len(data) & 3:
                raise _Reject("bad_base64", f"{name}_b64 holds {len(data)} bytes, not float32s")
            # A copy, never a view of the message buffer.
            vector = np.frombuffer(data, dtype="<f4").astype(np.float32)
        size = vector.size
        if size != self.dimension:
            if size == 0:
                raise _Reject("wrong_dimension", f"{name} is empty")
            if self.dimension is not None:
                raise _Reject(
                    "wrong_dimension", f"{name} has {size} numbers, the stream has {self.dimension}"
                )
            if size > self.max_dimension:
                raise _Reject("absurd_size", f"{name} has {size} numbers")
        # A float64 sum of float32 values is finite exactly when every value is (no overflow
        # below 1e300): one reduction instead of isfinite() and all().
        if not math.isfinite(vector.sum(dtype=np.float64)):
            raise _Reject("non_finite", f"{name} holds NaN, Inf, or a number beyond float32")
        if self.dimension is None:
            self.dimension = size
        return vector


# --- the batch path: the decoder's records a batch at a time --------------------------------


def _decode_known(decoder: Decoder, records: list[Record], rows: np.ndarray) -> list:
    """Decode with the dimension known, a batch at a time where the records allow it.

    A record takes the batch path only if it is a plain upsert or a single-document event whose
    every field already passed the same checks as in :meth:`Decoder.decode_one` and whose vector
    has the stream's length (parsed by simdjson when the vector is a JSON array and the record is
    plain enough, see :func:`_simdjson_record`; by orjson otherwise); everything else (deletes,
    ``doc_ids`` lists, anything doubtful or bad) is decoded by :meth:`Decoder.decode_one` on its
    own, so reasons and their order stay the reference's. The batch path converts each kind of
    vector with one call for the batch and checks finiteness (and zero documents) with one
    reduction; a record whose vector fails there is decoded again by :meth:`Decoder.decode_one`,
    which then names the reason. The batch path's events come as :meth:`Decoder.decode_rows` has
    them, their vectors in ``rows`` (one per record).
    """
    dim = decoder.dimension
    if len(records) < 2 or dim > decoder.max_dimension:
        return [decoder.decode_one(record) for record in records]
    out: list = [None] * len(records)
    one = decoder.decode_one
    loads = orjson.loads
    parse = _simdjson_parser().parse
    limit = decoder.max_message_bytes
    max_weight = decoder.max_weight
    strict = decoder.strict
    b64_length = 4 * -(-4 * dim // 3)
    # Per vector encoding: the records' indices, their fields, and their raw vectors.
    lists: tuple[list[int], list, list] = ([], [], [])
    texts: tuple[list[int], list, list] = ([], [], [])
    doubles: tuple[list[int], list, list] = ([], [], [])
    for i, record in enumerate(records):
        value = record.value
        if value is None or len(value) > limit:
            out[i] = one(record)
            continue
        # A vector as a JSON array: simdjson, when the record is plain enough (else orjson).
        if value.__class__ is bytes and value[:1] == b"{" and b'_b64"' not in value:
            found = _simdjson_record(parse, value, record.topic, dim, max_weight, strict)
            if found is not None:
                doubles[0].append(i)
                doubles[1].append(found[0])
                doubles[2].append(found[1])
                if len(doubles[0]) == _GROUP:
                    _finish(decoder, doubles, _from_doubles, records, out, rows)
                continue
        try:
            obj = loads(value)
        except orjson.JSONDecodeError:
            out[i] = one(record)
            continue
        if obj.__class__ is not dict or (strict and not KNOWN_FIELDS[record.topic].issuperset(obj)):
            out[i] = one(record, obj if obj.__class__ is dict else None)
            continue
        if record.topic == "docs":
            doc_id = _upsert_id(obj.get("id"), obj.get("op", "upsert"))
            if doc_id is None:
                out[i] = one(record, obj)
                continue
            fields = doc_id
            name = "embedding"
        else:
            fields = "doc_ids" not in obj and _event_fields(
                obj.get("query_id"),
                obj.get("doc_id"),
                obj.get("weight", 1.0),
                obj.get("split"),
                obj.get("ts"),
                max_weight,
            )
            if not fields:
                out[i] = one(record, obj)
                continue
            name = "query_embedding"
        raw = obj.get(name)
        if raw is not None and name + "_b64" in obj:
            out[i] = one(record, obj)  # ambiguous: the reference says so
            continue
        if raw is not None:
            group, convert = (lists, _from_lists) if raw.__class__ is list else (None, None)
            if group is not None and len(raw) != dim:
                group = None
        else:
            raw = obj.get(name + "_b64")
            group, convert = (texts, _from_base64) if raw.__class__ is str else (None, None)
            if group is not None and len(raw) != b64_length:
                group = None
        if group is None:
            out[i] = one(record, obj)
            continue
        group[0].append(i)
        group[1].append(fields)
        group[2].append(raw)
        if len(group[0]) == _GROUP:
            _finish(decoder, group, convert, records, out, rows)
    _finish(decoder, doubles, _from_doubles, records, out, rows)
    _finish(decoder, lists, _from_lists, records, out, rows)
    _finish(decoder, texts, _from_base64, records, out, rows)
    return out


def _finish(
    decoder: Decoder, group: tuple[list, list, list], convert, records, out: list, rows
) -> None:
    """Convert a group's vectors at once, check them, and put its items in ``out`` (the
    vectors in ``rows``)."""
    index, fields, raws = group
    if not index:
        return
    vectors = convert(raws, decoder.dimension)
    if vectors is None:  # some vector is not what it seemed: each on its own
        for i in index:
            out[i] = decoder.decode_one(records[i])
    else:
        good = np.isfinite(vectors).all(axis=1)
        if any(f.__class__ is str for f in fields):
            # Documents must not be all zeros (a zero query is fine).
            good &= vectors.any(axis=1) | np.array([f.__class__ is not str for f in fields])
        rows[index] = vectors
        for i, f, ok in zip(index, fields, good.tolist(), strict=True):
            if not ok:
                out[i] = decoder.decode_one(records[i])
            elif f.__class__ is str:
                out[i] = DocUpsert(f, rows[i])
            else:
                out[i] = f
    for part in group:
        part.clear()


# --- the field rules ------------------------------------------------------------------------
#
# Written once: the reference decoder (Decoder._document, Decoder._event) raises the reason they
# give; the batch paths (_decode_known, _simdjson_record) call the same functions and hand every
# record they refuse to the reference, which names the reason. What the batch paths check beyond
# these (a vector's length and encoding, finiteness, zero documents) they check in bulk, and they
# also defer to the reference on any doubt. tests/test_decode_batch.py checks that every path
# gives the reference's result.

_MISSING = object()  # a field that is absent (None is a JSON null)


def _text_value(value, name: str) -> str:
    """An id: a non-empty string."""
    if value.__class__ is str and value:
        return value
    if value is _MISSING:
        raise _Reject("missing_field", f"{name} is required")
    raise _Reject("wrong_type", f"{name} must be a non-empty string")


def _text(obj: dict, name: str) -> str:
    return _text_value(obj.get(name, _MISSING), name)


def _document_fields(doc_id, op) -> tuple[str, str]:
    """A document's id and op (``upsert``, the default, or ``delete``)."""
    doc_id = _text_value(doc_id, "id")
    if op != "upsert" and op != "delete":
        raise _Reject("unknown_op", f"op {op!r} is not 'upsert' or 'delete'")
    return doc_id, op


def _event_scalars(query_id, weight, split, ts, max_weight: float):
    """An event's query id, weight (a number within +-max_weight, default 1), split (``train``,
    ``validation`` or absent: then the stable hash decides) and time ``ts`` (a number of seconds,
    or absent), as ``(query_id, weight, split, ts)`` with the numbers as floats."""
    query_id = _text_value(query_id, "query_id")
    if weight.__class__ is not float:
        if weight.__class__ is not int:  # a bool is not a number here
            raise _Reject("bad_weight", f"weight {weight!r} is not a number")
        weight = float(weight)
    if not -max_weight <= weight <= max_weight:  # also false for NaN
        raise _Reject("bad_weight", f"weight {weight!r} is outside +-limits.max_weight")
    if split is not None and split != "train" and split != "validation":
        raise _Reject("bad_split", f"split {split!r} is not 'train' or 'validation'")
    if ts is not None and ts.__class__ is not float:
        if ts.__class__ is not int:
            raise _Reject("wrong_type", f"ts {ts!r} is not a number")
        ts = float(ts)
    return query_id, weight, split, ts


def _upsert_id(doc_id, op) -> str | None:
    """The batch paths' documents: the id of an upsert that passes the rules; else None."""
    try:
        doc_id, op = _document_fields(doc_id, op)
    except _Reject:
        return None
    return doc_id if op == "upsert" else None


def _event_fields(query_id, doc_id, weight, split, ts, max_weight: float):
    """The batch paths' events: a single-document event's fields as the batch path keeps them,
    ``(query_id, (doc_id,), weight, split, ts)``, if they pass the rules; else None."""
    try:
        query_id, weight, split, ts = _event_scalars(query_id, weight, split, ts, max_weight)
        return (query_id, (_text_value(doc_id, "doc_id"),), weight, split, ts)
    except _Reject:
        return None


_local = threading.local()


def _where(record: Record) -> str:
    """A record's place, for people: ``docs.jsonl line 3``, or its topic and position."""
    position = record.position
    if isinstance(position, dict) and "file" in position:
        return f"{position['file']} line {position['line']}"
    return f"{record.topic} {position}" if position is not None else record.topic


def _simdjson_parser() -> simdjson.Parser:
    """This thread's simdjson parser (one parser serves one document at a time)."""
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    return parser


def _simdjson_record(
    parse, value: bytes, topic: str, dim: int, max_weight: float, strict: bool = False
):
    """A plain upsert or single-document event whose vector is a JSON array of ``dim`` numbers:
    its fields (as the batch path keeps them) and its vector as float64 bytes; else None.

    None also for anything simdjson and orjson might read differently, so that orjson (the
    reference) decides: a byte order mark (the caller passes only text starting with ``{``),
    repeated keys (simdjson finds the first, orjson keeps the last), and more than one ``[`` in
    the text (simdjson flattens nested arrays into the buffer). Numbers are read as the reference
    reads them: correctly rounded to float64 (integers too, as numpy converts Python ints), then
    cast to float32. Nothing that refers to the parser outlives this call: it must not, for the
    parser to take the next document.
    """
    start = value.find(b"[")
    if start < 0 or value.find(b"[", start + 1) >= 0:
        return None
    try:
        obj = parse(value)
        if obj.__class__ is not simdjson.Object:
            return None
        keys = list(obj.keys())
        if len(set(keys)) != len(keys):
            return None
        if strict and not KNOWN_FIELDS[topic].issuperset(keys):
            return None
        if topic == "docs":
            doc_id = _upsert_id(
                obj["id"] if "id" in keys else None, obj["op"] if "op" in keys else "upsert"
            )
            if doc_id is None:
                return None
            fields = doc_id
            vector = obj["embedding"] if "embedding" in keys else None
        else:
            # A missing key is looked up in the key list: simdjson's get() raises inside for it.
            fields = "doc_ids" not in keys and _event_fields(
                obj["query_id"] if "query_id" in keys else None,
                obj["doc_id"] if "doc_id" in keys else None,
                obj["weight"] if "weight" in keys else 1.0,
                obj["split"] if "split" in keys else None,
                obj["ts"] if "ts" in keys else None,
                max_weight,
            )
            if not fields:
                return None
            vector = obj["query_embedding"] if "query_embedding" in keys else None
        if vector.__class__ is not simdjson.Array or len(vector) != dim:
            return None
        return fields, vector.as_buffer(of_type="d")
    except (ValueError, RuntimeError, TypeError, KeyError):  # not JSON, or not numbers
        return None


def _from_doubles(raws: list, dim: int) -> np.ndarray | None:
    """Buffers of ``dim`` float64 each (from simdjson) as one float32 array, or None if any is
    not that long."""
    data = b"".join(raws)
    if len(data) != 8 * dim * len(raws):
        return None
    return np.frombuffer(data, dtype=np.float64).reshape(len(raws), dim).astype(np.float32)


_NUMBER_TYPES = frozenset((int, float))


def _numbers_only(values: list) -> bool:
    """Whether a parsed JSON array holds only numbers (bool is a subclass of int, and numpy would
    also convert numeric strings: both are refused)."""
    return {*map(type, values)} <= _NUMBER_TYPES


def _from_lists(raws: list[list], dim: int) -> np.ndarray | None:
    """JSON arrays of ``dim`` numbers each as one float32 array, or None if any is not that."""
    if not all(map(_numbers_only, raws)):
        return None
    try:
        vectors = np.array(raws, dtype=np.float32)
    except (TypeError, ValueError):
        return None
    # Nested arrays of one shape convert without error, to more than two dimensions.
    return vectors if vectors.shape == (len(raws), dim) else None


def _from_base64(raws: list[str], dim: int) -> np.ndarray | None:
    """Base64 texts of ``dim`` float32 each as one array (a read-only view of the decoded bytes),
    or None if any is not that."""
    if 4 * dim % 3 == 0:
        # No padding: the texts joined are valid base64 exactly when each one is, and one
        # call decodes them all.
        data = _unpadded_b64decode("".join(raws))
    else:
        # Each on its own: one text a byte short and another a byte long must not pass as two
        # vectors of the right length with the bytes between them shifted.
        parts = [_fast_b64decode(text) for text in raws]
        if any(part is None or len(part) != 4 * dim for part in parts):
            return None
        data = b"".join(parts)
    if data is None or len(data) != 4 * dim * len(raws):
        return None
    # The caller copies the vectors into its own array.
    return np.frombuffer(data, dtype="<f4").reshape(len(raws), dim)


def _unpadded_b64decode(text: str) -> bytes | None:
    """The bytes of base64 ``text`` without padding (alphabet only, a multiple of 4 characters
    long), or None if the text is anything else (a test checks it against strict binascii)."""
    return None if "=" in text else _fast_b64decode(text)


def _fast_b64decode(text: str) -> bytes | None:
    """The bytes of base64 ``text``, or None: pybase64 (SIMD, far faster than binascii).

    Where it answers, the answer is strict binascii's (the reference, :func:`_strict_b64decode`);
    it refuses a few texts strict binascii takes (padding after a complete group), which then go
    the one-by-one way and get the reference's answer there. Tests check both.
    """
    try:
        return pybase64.b64decode(text, validate=True)
    except (ValueError, TypeError):  # binascii.Error is a ValueError
        return None


def _strict_b64decode(text: str) -> bytes:
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except TypeError:  # Python 3.10 has no strict_mode
        return base64.b64decode(text, validate=True)


class _Reject(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def is_validation(query_id: str, fraction: float) -> bool:
    """Whether a query id without an explicit split goes to validation.

    A stable hash (BLAKE2b of the UTF-8 id), so the answer is the same in every process and after
    every restart, unlike Python's salted ``hash()``.

    >>> [is_validation(q, 0.5) for q in ("q-1", "q-2", "q-3")], is_validation("q-1", 0.0)
    ([True, False, True], False)
    """
    return query_hash(query_id) < validation_below(fraction)


def validation_below(fraction: float) -> float:
    """The split rule: a query id whose :func:`query_hash` is below this goes to validation."""
    return fraction * 2.0**64


def query_hash(query_id: str) -> int:
    """The stable 64-bit hash :func:`is_validation` compares with :func:`validation_below`."""
    return int.from_bytes(hashlib.blake2b(query_id.encode("utf-8"), digest_size=8).digest(), "big")


def encode_event(
    query_id: str, vector: np.ndarray, doc_id: str, weight: float, split: str
) -> bytes:
    """A relevance event in the contract's form (a waiting click given back as a dead letter)."""
    body = {"query_id": query_id, "query_embedding": np.asarray(vector, np.float32)}
    body.update(doc_id=doc_id, weight=weight, split=split)
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _vector_field(vector: np.ndarray, encoding: str) -> tuple[str, Any]:
    if encoding == "base64":
        return "embedding_b64", pybase64.b64encode_as_string(vector.astype("<f4").tobytes())
    return "embedding", vector.astype(np.float32)


def encode_update(
    doc_id: str,
    vector: np.ndarray,
    method: str,
    gamma: float,
    generation: int,
    similarity: str,
    encoding: str = "json",
) -> bytes:
    """One update message (the value; the key is the document id)."""
    name, payload = _vector_field(vector, encoding)
    return orjson.dumps(
        {
            "id": doc_id,
            name: payload,
            "method": method,
            "gamma": float(gamma),
            "generation": int(generation),
            "similarity": similarity,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


@dataclass(slots=True)
class Updates:
    """Update messages not yet encoded: what they share and, per document, id, vector, generation.

    The engine hands these to its sinks as they are: a sink encodes them (:func:`encode_output`),
    where it sees fit (the Kafka sink in its producer process).
    """

    ids: list[str]
    vectors: np.ndarray  # (n, d) float32, the fine-tuned embeddings
    generations: np.ndarray  # (n,) int64
    method: str
    gamma: float
    similarity: str
    encoding: str

    def __len__(self) -> int:
        return len(self.ids)

    def encoded(self) -> list[OutputMessage]:
        """One :class:`OutputMessage` per update."""
        out = []
        for doc_id, vector, generation in zip(
            self.ids, self.vectors, self.generations.tolist(), strict=True
        ):
            value = encode_update(
                doc_id,
                vector,
                self.method,
                self.gamma,
                generation,
                self.similarity,
                self.encoding,
            )
            out.append(OutputMessage(doc_id, value, value, generation))
        return out


class Tombstone(NamedTuple):
    """A deleted document, for the updates stream."""

    id: str
    generation: int


class OutputMessage(NamedTuple):
    """One message of the updates stream, encoded.

    ``value`` is the update, or None for a deleted document (a Kafka tombstone); ``line`` is the
    JSONL form (the update itself, or ``{"id": ..., "deleted": true, "generation": ...}``).
    """

    key: str
    value: bytes | None
    line: bytes
    generation: int


def encode_output(tombstones: list[Tombstone], updates: Updates | None) -> list[OutputMessage]:
    """The updates stream's messages for one engine call: tombstones first, then updates (the
    order in which the engine produced them, and in which a sink writes them)."""
    out = [
        OutputMessage(t.id, None, encode_tombstone(t.id, t.generation), t.generation)
        for t in tombstones
    ]
    if updates is not None:
        out.extend(updates.encoded())
    return out


def encode_tombstone(doc_id: str, generation: int) -> bytes:
    """The JSONL form of a deletion (Kafka gets a null value instead)."""
    return orjson.dumps({"id": doc_id, "deleted": True, "generation": int(generation)})


def encode_dead_letter(letter: DeadLetter) -> bytes:
    """A dead letter as JSON: reason, detail, where it came from and the raw input."""
    record = letter.record
    out: dict[str, Any] = {
        "reason": letter.reason,
        "detail": letter.detail,
        "topic": record.topic,
        "position": record.position,
    }
    value = record.value
    if value is not None:
        truncated = len(value) > _RAW_KEEP
        value = bytes(value[:_RAW_KEEP])
        try:
            out["raw"] = value.decode("utf-8")
        except UnicodeDecodeError:
            out["raw_b64"] = base64.b64encode(value).decode("ascii")
        if truncated:
            out["raw_truncated_at"] = _RAW_KEEP
    return orjson.dumps(out, default=str)
