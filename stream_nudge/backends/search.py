"""Searching a backend the sink wrote, with the backend's own query: what a user's search does.

- PostgreSQL + pgvector: ``SELECT id FROM T ORDER BY embedding <=> q LIMIT k`` (``<=>`` is the
  cosine distance; ``<#>``, the negated inner product, for dot), through the HNSW index, or
  exactly with index scans turned off for the transaction;
- LanceDB: ``table.search(q).metric(...).limit(k)``, through the vector index once there is one,
  or exactly (``bypass_vector_index``).

:func:`measure` compares a backend's answers with the exact search and with the numpy
evaluation of the same embeddings (read back from the backend), for the walkthrough and its test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from stream_nudge.backends.base import BackendError
from stream_nudge.backends.lance import parse_lance_url
from stream_nudge.metrics import ndcg_of_rankings, rankings

__all__ = ["contents", "measure", "recall_at", "top_k"]

_PG_OPERATOR = {"cosine": "<=>", "dot": "<#>"}


def _pg(url: str, table: str):
    import psycopg
    from pgvector.psycopg import register_vector

    from stream_nudge.backends.postgres import split_table

    dsn, table = split_table(url, table)
    conn = psycopg.connect(dsn)
    register_vector(conn)
    return conn, table


def _lance(url: str, table: str):
    import lancedb

    path, table = parse_lance_url(url, table)
    return lancedb.connect(path).open_table(table)


def top_k(
    url: str,
    table: str,
    queries: np.ndarray,
    k: int = 10,
    similarity: str = "cosine",
    exact: bool = False,
) -> list[list[str]]:
    """The ids of each query's ``k`` best documents, best first, as the backend answers."""
    queries = np.asarray(queries, dtype=np.float32)
    if url.startswith("lancedb://"):
        t = _lance(url, table)
        out = []
        for q in queries:
            search = t.search(q).metric(similarity).limit(k).select(["id"])
            if exact:
                search = search.bypass_vector_index()
            out.append(search.to_arrow()["id"].to_pylist())
        return out
    if not url.startswith(("postgresql://", "postgres://")):
        raise BackendError(f"{url}: not a backend URL")
    conn, name = _pg(url, table)
    op = _PG_OPERATOR[similarity]
    try:
        with conn.transaction():
            if exact:
                conn.execute("SET LOCAL enable_indexscan = off")
            sql = f"SELECT id FROM {name} ORDER BY embedding {op} %s LIMIT %s"
            return [[r[0] for r in conn.execute(sql, (q, k)).fetchall()] for q in queries]
    finally:
        conn.close()


def contents(url: str, table: str) -> tuple[list[str], np.ndarray]:
    """Every document's id and embedding, as the backend holds them."""
    if url.startswith("lancedb://"):
        data = _lance(url, table).to_arrow()
        vectors = np.asarray(data["vector"].combine_chunks().flatten(), dtype=np.float32)
        return data["id"].to_pylist(), vectors.reshape(len(data), -1)
    conn, name = _pg(url, table)
    try:
        rows = conn.execute(f"SELECT id, embedding FROM {name}").fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows], np.stack([r[1].to_numpy() for r in rows]).astype(np.float32)


def recall_at(found: Sequence[Sequence[str]], truth: Sequence[Sequence[str]]) -> float:
    """Mean share of the exact top k that a search found (recall@k of an index), in percent."""
    return 100.0 * float(
        np.mean([len(set(f) & set(t)) / max(len(t), 1) for f, t in zip(found, truth, strict=True)])
    )


def measure(
    url: str,
    table: str,
    queries: np.ndarray,
    relevant: Sequence[Mapping[str, float]],
    k: int = 10,
    similarity: str = "cosine",
) -> dict[str, float]:
    """NDCG@k of the backend's search (its index), of its exact search, and of numpy on the
    embeddings it holds; and recall@k of its search against its exact search."""
    searched = top_k(url, table, queries, k, similarity)
    exact = top_k(url, table, queries, k, similarity, exact=True)
    ids, vectors = contents(url, table)
    if similarity == "cosine":
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = rankings(vectors, np.asarray(queries, dtype=np.float32), k)
    in_numpy = [[ids[r] for r in row] for row in rows]
    return {
        f"NDCG@{k} backend": ndcg_of_rankings(searched, relevant, k),
        f"NDCG@{k} backend exact": ndcg_of_rankings(exact, relevant, k),
        f"NDCG@{k} numpy": ndcg_of_rankings(in_numpy, relevant, k),
        f"recall@{k} of the index": recall_at(searched, exact),
        "documents": float(len(ids)),
    }
