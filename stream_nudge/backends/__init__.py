"""Search backends that ``stream-nudge sink`` writes the updates into: PostgreSQL with pgvector
(:mod:`~stream_nudge.backends.postgres`) and LanceDB (:mod:`~stream_nudge.backends.lance`).

Each holds, per document id, the update with the highest generation (a deletion removes the row),
and the offsets of the input it reflects, written with the rows: the sink resumes from those,
not from a consumer group.
"""

from __future__ import annotations

from stream_nudge.backends.base import Backend, BackendError, BackendUnavailable, Offsets

__all__ = ["Backend", "BackendError", "BackendUnavailable", "Offsets", "open_backend"]


def open_backend(
    url: str,
    table: str = "stream_nudge_embeddings",
    create: bool = False,
    dimension: int | None = None,
    index: bool = True,
    index_min_rows: int = 100_000,
    optimize_interval_s: float = 600.0,
) -> Backend:
    """The backend ``url`` names (not connected yet): ``postgresql://...`` (or
    ``postgres://``) or ``lancedb://PATH?table=NAME``."""
    if url.startswith(("postgresql://", "postgres://")):
        try:
            import pgvector.psycopg  # noqa: F401
            import psycopg  # noqa: F401

            from stream_nudge.backends.postgres import PgVectorBackend
        except ImportError as exc:
            raise BackendError(
                f"the PostgreSQL backend needs psycopg and pgvector ({exc}): "
                "pip install 'stream-nudge[postgres]'"
            ) from exc
        return PgVectorBackend(url, table, create=create, dimension=dimension, index=index)
    if url.startswith("lancedb://"):
        try:
            import lancedb  # noqa: F401

            from stream_nudge.backends.lance import LanceBackend
        except ImportError as exc:
            raise BackendError(
                f"the LanceDB backend needs lancedb ({exc}): pip install 'stream-nudge[lancedb]'"
            ) from exc
        return LanceBackend(
            url,
            table,
            create=create,
            dimension=dimension,
            index=index,
            index_min_rows=index_min_rows,
            optimize_interval_s=optimize_interval_s,
        )
    raise BackendError(
        f"sink.to {url.split('@')[-1]!r}: not a backend URL; use postgresql://USER@HOST:PORT/DB "
        "or lancedb://PATH?table=NAME"
    )
