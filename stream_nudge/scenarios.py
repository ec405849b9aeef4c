"""Synthetic streams for evaluation: a drift scenario that decay should win.

``shift_scenario``: documents sit around topics; users word queries in one of two *clusters* of
vocabulary (two fixed distortions of a document's embedding, far apart). The stream starts with
cluster A and moves to cluster B: the first half of the events come from A, then B takes over,
and clicks land on the same documents throughout. Test queries are held-out cluster-B queries:
what the users of today ask. Without decay a document's query sum still points half toward its
cluster-A wording long after the users moved on; with decay it follows cluster B.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import orjson

from stream_nudge.config import Config
from stream_nudge.demo import topic_corpus

__all__ = ["shift_scenario"]

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def _wording(rng, dim: int) -> np.ndarray:
    """A cluster's vocabulary: a random rotation mixed with a little of the identity, so that
    base similarity still finds something, but the two clusters' pulls point different ways."""
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return 0.45 * np.eye(dim) + rotation


def shift_scenario(
    out_dir: str | os.PathLike,
    seed: int = 11,
    n_topics: int = 50,
    docs_per_topic: int = 20,
    dim: int = 64,
    clicked: int = 1000,
    events: int = 8000,
    test_queries: int = 600,
    validation_every: int = 10,
    noise_scale: float = 1.5,
) -> dict:
    """Write ``docs.jsonl``, ``events.jsonl`` and ``test.jsonl`` to ``out_dir``.

    Returns their paths and ``config``: a function that adapts a :class:`Config` to the scenario
    (a validation window of recent queries, so that gamma follows the drift too).
    """
    rng = np.random.default_rng(seed)
    n_docs = n_topics * docs_per_topic
    docs = topic_corpus(rng, n_topics, docs_per_topic, dim, spread=0.6)
    wordings = {"A": _wording(rng, dim), "B": _wording(rng, dim)}
    pool = rng.choice(n_docs, size=clicked, replace=False)

    def query(cluster: str, row: int) -> np.ndarray:
        # Noise comparable to the signal: one query says little, a document's many clicks more.
        noise = noise_scale * rng.normal(size=dim) / np.sqrt(dim)
        return (wordings[cluster] @ docs[row] + noise).astype(np.float32)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"{name}.jsonl" for name in ("docs", "events", "test")}
    with paths["docs"].open("wb") as f:
        for i in range(n_docs):
            line = {"op": "upsert", "id": f"d{i}", "embedding": docs[i].astype(np.float32)}
            f.write(orjson.dumps(line, option=_NUMPY) + b"\n")
    with paths["events"].open("wb") as f:
        for n in range(events):
            cluster = "A" if n < events // 2 else "B"
            row = int(rng.choice(pool))
            event = {
                "query_id": f"{cluster.lower()}{n}",
                "query_embedding": query(cluster, row),
                "doc_id": f"d{row}",
                "split": "validation" if n % validation_every == 0 else "train",
            }
            f.write(orjson.dumps(event, option=_NUMPY) + b"\n")
    with paths["test"].open("wb") as f:
        for n in range(test_queries):
            row = int(rng.choice(pool))
            line = {
                "query_id": f"t{n}",
                "query_embedding": query("B", row),
                "relevant": [f"d{row}"],
            }
            f.write(orjson.dumps(line, option=_NUMPY) + b"\n")

    def adapt(config: Config) -> Config:
        window = max(1, events // validation_every // 8)
        return dataclasses.replace(
            config, validation=dataclasses.replace(config.validation, window=window)
        )

    return {**paths, "config": adapt}
