"""``stream-nudge demo``: a synthetic domain-shifted stream, replayed through the engine.

Documents sit around topics. Users word their queries "off-axis": a query is a fixed distortion of
its document's embedding (the domain's vocabulary, which the pre-trained model does not know) plus
noise, so base similarity often ranks a near neighbour first. Clicks follow true relevance, with
some noise. The stream (documents, then clicks) runs through the very engine that ``replay`` and
``run`` use, and held-out queries measure hit@1 and NDCG@10 before and after.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import orjson

from stream_nudge.config import Config, load_config
from stream_nudge.engine import Engine
from stream_nudge.loop import run
from stream_nudge.messages import Record
from stream_nudge.sinks import MemorySink
from stream_nudge.sources import MemorySource

__all__ = ["DemoData", "make_stream", "run_demo", "topic_corpus"]


@dataclass
class DemoData:
    docs: list[Record]
    events: list[Record]
    doc_ids: list[str]
    doc_vectors: np.ndarray
    test_queries: np.ndarray
    test_answers: np.ndarray  # one relevant document row per test query


def topic_corpus(rng, n_topics: int, docs_per_topic: int, dim: int, spread: float) -> np.ndarray:
    """Unit documents around ``n_topics`` random centres (``docs_per_topic`` each, in topic
    order), ``spread`` away from them: near neighbours for base similarity to confuse."""
    centres = rng.normal(size=(n_topics, dim))
    docs = np.repeat(centres, docs_per_topic, axis=0)
    docs += spread * rng.normal(size=docs.shape)
    return docs / np.linalg.norm(docs, axis=1, keepdims=True)


def make_stream(
    seed: int = 7,
    n_topics: int = 40,
    docs_per_topic: int = 25,
    dim: int = 48,
    popular: int = 400,
    clicks_per_doc: int = 3,
    click_noise: float = 0.15,
) -> DemoData:
    rng = np.random.default_rng(seed)
    n_docs = n_topics * docs_per_topic
    docs = topic_corpus(rng, n_topics, docs_per_topic, dim, spread=0.5)
    # The domain's wording: a fixed distortion of the document direction, plus a shared shift.
    distortion = np.eye(dim) + 1.0 * rng.normal(size=(dim, dim)) / np.sqrt(dim)
    shift = 0.5 * rng.normal(size=dim) / np.sqrt(dim)

    def query(rows: np.ndarray) -> np.ndarray:
        q = (
            docs[rows] @ distortion.T
            + shift
            + 0.8 * rng.normal(size=(len(rows), dim)) / np.sqrt(dim)
        )
        return q.astype(np.float32)

    liked = rng.choice(n_docs, size=popular, replace=False)
    train_rows = np.repeat(liked, clicks_per_doc)
    rng.shuffle(train_rows)
    queries = query(train_rows)
    base = queries @ docs.T
    top5 = np.argsort(-base, axis=1)[:, :5]
    noisy = rng.random(len(train_rows)) < click_noise
    clicked = np.where(
        noisy, top5[np.arange(len(train_rows)), rng.integers(0, 5, len(train_rows))], train_rows
    )

    ids = [f"doc-{i}" for i in range(n_docs)]
    doc_records = [
        Record(
            "docs",
            orjson.dumps(
                {"op": "upsert", "id": ids[i], "embedding": docs[i].astype(np.float32)},
                option=orjson.OPT_SERIALIZE_NUMPY,
            ),
            position=i,
        )
        for i in range(n_docs)
    ]
    event_records = [
        Record(
            "events",
            orjson.dumps(
                {
                    "query_id": f"q-{n}",
                    "query_embedding": queries[n],
                    "doc_id": ids[clicked[n]],
                    "ts": 1.7e9 + n,
                },
                option=orjson.OPT_SERIALIZE_NUMPY,
            ),
            position=n,
        )
        for n in range(len(train_rows))
    ]
    test_rows = rng.choice(liked, size=popular)
    return DemoData(
        doc_records, event_records, ids, docs.astype(np.float32), query(test_rows), test_rows
    )


def _scores(
    embeddings: np.ndarray, queries: np.ndarray, answers: np.ndarray
) -> tuple[float, float]:
    """hit@1 and NDCG@10 of one relevant document per query, ranking by dot product."""
    s = queries @ embeddings.T
    own = s[np.arange(len(answers)), answers]
    rank = 1 + (s > own[:, None]).sum(axis=1)
    hit = float(np.mean(rank == 1))
    ndcg = float(np.mean(np.where(rank <= 10, 1.0 / np.log2(rank + 1), 0.0)))
    return hit, ndcg


def run_demo(config: Config | None = None, print_fn=print) -> dict[str, tuple[float, float]]:
    started = time.perf_counter()
    data = make_stream()
    base = config or load_config()
    results = {"no fine-tuning": _scores(data.doc_vectors, data.test_queries, data.test_answers)}
    gammas = {}
    for method in ("nudge-n", "nudge-m"):
        params = dataclasses.replace(base.engine_params(), method=method)
        engine = Engine(params)
        sink = MemorySink()
        run(engine, MemorySource(data.docs + data.events), sink, base.replay.batch_size)
        ids, embeddings = engine.adjusted()
        order = np.argsort([int(i.split("-")[1]) for i in ids])
        embeddings = embeddings[order]
        results[f"{method.upper()} (streamed)"] = _scores(
            embeddings, data.test_queries, data.test_answers
        )
        gammas[method] = (
            engine.gamma,
            engine.counts["updates"],
            engine.counts["validation_events"],
        )
    seconds = time.perf_counter() - started
    n_events = len(data.events)
    print_fn(
        f"stream-nudge demo: {len(data.docs):,} documents, {n_events:,} click events, "
        f"{len(data.test_answers)} held-out queries (synthetic, domain-shifted)"
    )
    print_fn("")
    print_fn(f"{'':24s}{'hit@1':>8s}{'NDCG@10':>10s}")
    for name, (hit, ndcg) in results.items():
        print_fn(f"{name:24s}{hit:8.3f}{ndcg:10.3f}")
    print_fn("")
    for method, (gamma, updates, validation) in gammas.items():
        print_fn(
            f"{method}: gamma {gamma:.4f}, {updates} updates published, {validation} validation clicks"
        )
    print_fn(f"done in {seconds:.1f} s")
    return results
