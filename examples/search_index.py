"""Keeping an in-memory search index in step with the stream-nudge updates topic.

    python examples/search_index.py --bootstrap 127.0.0.1:9092 --topic updates

The updates topic is a table: the latest message per document id is the embedding to search with.
Read it from the beginning, upsert by key, delete on a tombstone (null value), and rank with the
similarity each update names ("cosine" for nudge-n, whose vectors are unit-length, so a dot product
gives the cosine; "dot" for nudge-m). Replayed messages after a restart of stream-nudge carry the
same or a higher generation: skip any message whose generation is below the one you hold.
"""

from __future__ import annotations

import argparse
import base64

import numpy as np
import orjson
from kafka import KafkaConsumer


class NudgedIndex:
    """Document id -> current embedding, with brute-force dot-product search."""

    def __init__(self):
        self.vectors: dict[str, np.ndarray] = {}
        self.generations: dict[str, int] = {}

    def apply(self, key: bytes, value: bytes | None, generation: int | None = None) -> None:
        doc_id = key.decode()
        if generation is not None and generation < self.generations.get(doc_id, -1):
            return  # an older message replayed after a restart
        if generation is not None:
            self.generations[doc_id] = generation
        if value is None:
            self.vectors.pop(doc_id, None)
            return
        body = orjson.loads(value)
        if "embedding" in body:
            vector = np.asarray(body["embedding"], dtype=np.float32)
        else:
            vector = np.frombuffer(base64.b64decode(body["embedding_b64"]), dtype="<f4").copy()
        self.vectors[doc_id] = vector

    def search(self, query: np.ndarray, k: int = 10) -> list[tuple[str, float]]:
        ids = list(self.vectors)
        if not ids:
            return []
        scores = np.stack([self.vectors[i] for i in ids]) @ np.asarray(query, dtype=np.float32)
        top = np.argsort(-scores)[:k]
        return [(ids[i], float(scores[i])) for i in top]


def follow(bootstrap: str, topic: str, index: NudgedIndex, stop_when_idle: bool = False) -> None:
    """Apply every message of ``topic`` to ``index``, from the beginning; forever unless told."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        while True:
            batch = consumer.poll(timeout_ms=1000)
            for records in batch.values():
                for r in records:
                    generation = next(
                        (int(v) for k, v in (r.headers or []) if k == "generation"), None
                    )
                    index.apply(r.key, r.value, generation)
            if stop_when_idle and not batch:
                return
    finally:
        consumer.close()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--topic", default="updates")
    a = p.parse_args()
    index = NudgedIndex()
    follow(a.bootstrap, a.topic, index, stop_when_idle=True)
    print(f"{len(index.vectors)} documents in the index")


if __name__ == "__main__":
    main()
