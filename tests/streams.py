"""Helpers to turn arrays into message streams (records, JSONL files)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np
import orjson

from stream_nudge.config import load_config
from stream_nudge.engine import Engine
from stream_nudge.loop import run
from stream_nudge.messages import Record
from stream_nudge.sinks import MemorySink
from stream_nudge.sources import MemorySource

NUMPY = orjson.OPT_SERIALIZE_NUMPY


def vector_field(name: str, vector, b64: bool) -> dict:
    v = np.asarray(vector, dtype=np.float32)
    if b64:
        return {name + "_b64": base64.b64encode(v.astype("<f4").tobytes()).decode()}
    return {name: v}


def doc_message(doc_id: str, vector, b64: bool = False) -> bytes:
    return orjson.dumps(
        {"op": "upsert", "id": doc_id, **vector_field("embedding", vector, b64)}, option=NUMPY
    )


def delete_message(doc_id: str) -> bytes:
    return orjson.dumps({"op": "delete", "id": doc_id})


def event_message(
    query_id: str, vector, doc_ids, split=None, weight=None, ts=None, b64=False
) -> bytes:
    body = {"query_id": query_id, **vector_field("query_embedding", vector, b64)}
    doc_ids = [doc_ids] if isinstance(doc_ids, str) else list(doc_ids)
    if len(doc_ids) == 1:
        body["doc_id"] = doc_ids[0]
    else:
        body["doc_ids"] = doc_ids
    if split is not None:
        body["split"] = split
    if weight is not None:
        body["weight"] = weight
    if ts is not None:
        body["ts"] = ts
    return orjson.dumps(body, option=NUMPY)


def dataset_messages(shared_data, name: str, b64: bool = False, per_pair: bool = False):
    """A shared data set as (doc messages, event messages, arrays) with explicit splits: one event
    per query with all its answers, or with ``per_pair`` one per (query, answer)."""
    z = np.load(shared_data / name / "embeddings.npz")
    docs, queries, qrels, split = z["doc_emb"], z["query_emb"], z["qrels"], z["split"]
    answers = [set() for _ in range(len(queries))]
    for q, d, _ in qrels:
        answers[q].add(int(d))
    answers = [sorted(a) for a in answers]
    doc_msgs = [doc_message(f"d{i}", docs[i], b64) for i in range(len(docs))]
    event_msgs = []
    for label, code in (("train", 0), ("validation", 1)):
        for i in np.flatnonzero(split == code):
            doc_ids = [f"d{d}" for d in answers[i]]
            for group in [[d] for d in doc_ids] if per_pair else [doc_ids]:
                event_msgs.append(event_message(f"q{i}", queries[i], group, label, b64=b64))
    return doc_msgs, event_msgs, (docs, queries, answers, split)


def fine_tune_on(docs, queries, answers, train, val, method, objective="hit@1"):
    """Batch fine_tune with the given training and validation query rows."""
    from stream_nudge import fine_tune

    return fine_tune(
        docs,
        queries[train],
        [answers[i] for i in train],
        queries[val],
        [answers[i] for i in val],
        method=method,
        objective=objective,
    )


def records(doc_msgs, event_msgs) -> list[Record]:
    return [Record("docs", m, position=i) for i, m in enumerate(doc_msgs)] + [
        Record("events", m, position=i) for i, m in enumerate(event_msgs)
    ]


def run_engine(recs, overrides=None, batch_size=1000):
    """Run records through a fresh engine; returns (engine, sink). With
    ``STREAM_NUDGE_TEST_BLOCKS=small`` (see conftest) the batches are smaller than asked."""
    if os.environ.get("STREAM_NUDGE_TEST_BLOCKS") == "small":
        batch_size = batch_size // 7 + 1
    engine = Engine(load_config(overrides=overrides or {}))
    sink = MemorySink()
    run(engine, MemorySource(recs), sink, batch_size)
    return engine, sink


def write_jsonl(path: Path, messages) -> Path:
    path.write_bytes(b"".join(m + b"\n" for m in messages))
    return path


def sums_by_id(engine) -> dict[str, np.ndarray]:
    docs = engine.docs
    out = {}
    for doc_id, row in docs.row_of.items():
        slot = docs.slot_of[row]
        out[doc_id] = docs.slots.sums[slot].copy() if slot >= 0 else np.zeros(docs.dim)
    return out
