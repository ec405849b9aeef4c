"""Reading what a search backend holds, for the tests."""

from __future__ import annotations

import numpy as np


def pg_content(dsn: str, table: str) -> dict[str, tuple[int, np.ndarray]]:
    import psycopg
    from pgvector.psycopg import register_vector

    with psycopg.connect(dsn) as conn:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]
        if not exists:
            return {}
        register_vector(conn)
        rows = conn.execute(f"SELECT id, generation, embedding FROM {table}").fetchall()
    return {i: (g, np.asarray(e.to_numpy(), dtype=np.float32)) for i, g, e in rows}


def lance_content(path, table: str) -> dict[str, tuple[int, np.ndarray]]:
    import lancedb

    try:
        data = lancedb.connect(str(path)).open_table(table).to_arrow().to_pylist()
    except ValueError:  # no such table
        return {}
    return {r["id"]: (r["generation"], np.asarray(r["vector"], np.float32)) for r in data}


def assert_content(got, want) -> None:
    assert sorted(got) == sorted(want)
    for doc_id, (generation, vector) in want.items():
        assert got[doc_id][0] == generation, doc_id
        np.testing.assert_array_equal(got[doc_id][1], vector)
