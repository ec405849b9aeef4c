"""PostgreSQL with pgvector as a search backend (psycopg 3 and the ``pgvector`` package).

Three tables, for a configured name ``T`` (``sink.table``, or ``?table=`` in the DSN):

- ``T``: ``id text PRIMARY KEY, embedding vector(d), generation bigint, updated_at timestamptz``,
  with an HNSW index on the embedding for the updates' similarity (cosine: ``vector_cosine_ops``,
  for ``<=>``; dot: ``vector_ip_ops``, for ``<#>``); what a search queries. Made with ``create``:
  the table at the first update, the index once the sink has caught up with its input
  (:meth:`PgVectorBackend.caught_up`).
- ``T_deleted``: ``id, generation`` of each deletion, so that an older update arriving after it
  (a replay, a duplicate) cannot bring the row back.
- ``T_offsets``: ``source, partition, next_offset``: where the sink resumes.

One batch is one transaction: the upserts are COPYed (binary) into a temporary table and merged
with one ``INSERT ... ON CONFLICT (id) DO UPDATE ... WHERE T.generation < EXCLUDED.generation``,
the deletions applied with the same rule, and the offsets written. A crash at any point leaves
the rows and the offsets they reflect together, so the sink resumes exactly after the last batch
the database committed.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from stream_nudge.backends.base import BackendError, BackendUnavailable, Offsets
from stream_nudge.backends.updates import Net
from stream_nudge.faults import crash_point

__all__ = ["PgVectorBackend", "split_table"]

log = logging.getLogger(__name__)

#: pgvector's HNSW index takes vectors of at most this many dimensions.
_HNSW_MAX_DIM = 2000

_OPS = {"cosine": "vector_cosine_ops", "dot": "vector_ip_ops"}


def split_table(url: str, default: str) -> tuple[str, str]:
    """``(dsn, table)``: a ``table`` query parameter taken out of a ``postgresql://`` URL
    (psycopg would refuse it), or ``default``.

    >>> split_table("postgresql://u@h:5/db?table=emb&sslmode=require", "t")
    ('postgresql://u@h:5/db?sslmode=require', 'emb')
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    table = next((v for k, v in query if k == "table"), default)
    rest = urlencode([(k, v) for k, v in query if k != "table"])
    return urlunsplit(parts._replace(query=rest)), table


#: A server that refuses a connection for these reasons may accept it soon.
_PASSING = ("starting up", "shutting down", "too many", "in recovery", "not yet accepting")


def _refused_for_good(text: str) -> bool:
    """Whether a failed connection cannot work by waiting: the server answered and refused (no
    such database or role, a wrong password) or the DSN itself is wrong; not a server that is
    down, unreachable, or starting."""
    if "connection is bad" in text or ("invalid" in text and "FATAL" not in text):
        return True
    return "FATAL" in text and not any(reason in text for reason in _PASSING)


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no extension
_COPY_TRAILER = b"\xff\xff"


def copy_rows(changes, dim: int) -> bytes:
    """``(id, embedding, generation)`` of ``changes`` in PostgreSQL's binary COPY format, the
    fixed-size part of every row (the vector as pgvector sends it: dimension, then big-endian
    float32s; the generation) made by numpy at once, so that a row costs one join, not a
    type adapter per field."""
    fixed = np.dtype(
        [
            ("vector_length", ">i4"),
            ("dim", ">i2"),
            ("unused", ">i2"),
            ("vector", ">f4", (dim,)),
            ("generation_length", ">i4"),
            ("generation", ">i8"),
        ]
    )
    block = np.zeros(len(changes), dtype=fixed)
    block["vector_length"] = 4 + 4 * dim
    block["dim"] = dim
    block["vector"] = np.stack([c.vector for c in changes])
    block["generation_length"] = 8
    block["generation"] = [c.generation for c in changes]
    data, size = block.tobytes(), fixed.itemsize
    parts = [_COPY_HEADER]
    for i, change in enumerate(changes):
        key = change.id.encode()
        parts.append(b"\x00\x03" + len(key).to_bytes(4, "big") + key)
        parts.append(data[i * size : (i + 1) * size])
    parts.append(_COPY_TRAILER)
    return b"".join(parts)


def _redacted(dsn: str) -> str:
    """The DSN without its password, for messages."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", dsn)


class PgVectorBackend:
    """Writes the updates into a pgvector table; see the module's docstring."""

    def __init__(
        self,
        url: str,
        table: str,
        create: bool = False,
        dimension: int | None = None,
        index: bool = True,
    ):
        self.dsn, table = split_table(url, table)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?", table):
            raise BackendError(
                f"sink.table {table!r}: a table name (letters, digits, _; schema.table allowed)"
            )
        self.table = table
        self.create = create
        self.dimension = dimension
        self.similarity: str | None = None
        self.name = f"{_redacted(self.dsn)} table {table}"
        self._conn = None
        self._ready = False  # the tables exist and are checked
        # With create: build the HNSW index at the next catch-up (if the table has none).
        self._index_wanted = create and index

    # --- connection and schema ----------------------------------------------------------------

    def open(self) -> None:
        """Connect and check what exists (or create it, with ``create``; the data table waits
        for the first update when the dimension is not known yet). Raises
        :class:`BackendUnavailable` when the server cannot be reached, :class:`BackendError`
        when what is there cannot work."""
        import psycopg

        try:
            self._conn = psycopg.connect(self.dsn, autocommit=False, connect_timeout=10)
        except psycopg.OperationalError as exc:
            text = " ".join(str(exc).split())
            message = (
                f"cannot connect to {_redacted(self.dsn)}: {text} "
                "(check sink.to / --to: host, port, database, user, password)"
            )
            if _refused_for_good(text):
                raise BackendError(message) from exc
            raise BackendUnavailable(message) from exc
        except psycopg.ProgrammingError as exc:
            raise BackendError(f"sink.to {_redacted(self.dsn)} is not a valid DSN: {exc}") from exc
        try:
            self._check_extension()
            self._check_tables()
            self._conn.commit()
        except psycopg.OperationalError as exc:
            self.close()
            raise BackendUnavailable(f"{self.name}: {exc}") from exc
        except BackendError:
            self.close()
            raise

    def _check_extension(self) -> None:
        import psycopg
        from pgvector.psycopg import register_vector

        cur = self._conn.cursor()
        row = cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        if row is None:
            if not self.create:
                raise BackendError(
                    f"the vector extension is not enabled in {_redacted(self.dsn)}: run "
                    "CREATE EXTENSION vector there (as a user allowed to), or start the sink "
                    "with --create (sink.create: true)"
                )
            try:
                cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg.errors.FeatureNotSupported as exc:
                raise BackendError(
                    f"pgvector is not installed on the server of {_redacted(self.dsn)}: install "
                    f"it there (https://github.com/pgvector/pgvector#installation): {exc}"
                ) from exc
            except psycopg.errors.InsufficientPrivilege as exc:
                raise BackendError(
                    f"not allowed to CREATE EXTENSION vector in {_redacted(self.dsn)}: have an "
                    f"administrator run it: {exc}"
                ) from exc
            row = cur.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
            ).fetchone()
            log.info("created the vector extension (pgvector %s)", row[0])
        register_vector(self._conn)

    def _names(self) -> tuple[str, str, str]:
        return self.table, f"{self.table}_deleted", f"{self.table}_offsets"

    def _check_tables(self) -> None:
        table, deleted, offsets = self._names()
        cur = self._conn.cursor()
        found = cur.execute(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(%s) AND a.attname = 'embedding' AND NOT a.attisdropped",
            (table,),
        ).fetchone()
        exists = cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]
        if exists:
            if found is None:
                raise BackendError(f"table {table} has no embedding column")
            match = re.fullmatch(r"vector\((\d+)\)", found[0])
            if match is None:
                raise BackendError(
                    f"table {table}: its embedding column is {found[0]}, not vector(d)"
                )
            dim = int(match.group(1))
            if self.dimension is not None and dim != self.dimension:
                raise BackendError(
                    f"table {table} holds vector({dim}), but the updates are {self.dimension}-d"
                )
            self.dimension = dim
            for column in ("id", "generation"):
                if (
                    cur.execute(
                        "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s",
                        (table, column),
                    ).fetchone()
                    is None
                ):
                    raise BackendError(f"table {table} has no {column} column")
        elif not self.create:
            raise BackendError(
                f"table {table} does not exist in {_redacted(self.dsn)}: start the sink with "
                "--create (sink.create: true) to create it, or create it as the README shows"
            )
        for name in (deleted, offsets):
            missing = cur.execute("SELECT to_regclass(%s) IS NULL", (name,)).fetchone()[0]
            if missing and not (self.create or exists):
                raise BackendError(f"table {name} does not exist (--create makes it)")
        # The small tables are ours: made whenever they are missing.
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {deleted} (id text PRIMARY KEY, generation bigint NOT NULL)"
        )
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {offsets} (source text NOT NULL, partition integer "
            "NOT NULL, next_offset bigint NOT NULL, PRIMARY KEY (source, partition))"
        )
        self._ready = exists

    def _create_table(self, dimension: int) -> None:
        table = self.table
        self._conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (id text PRIMARY KEY, embedding "
            f"vector({int(dimension)}) NOT NULL, generation bigint NOT NULL, "
            "updated_at timestamptz NOT NULL DEFAULT now())"
        )
        log.info(
            "created table %s (vector(%d)); its HNSW index follows once the sink has caught up "
            "with its input",
            table,
            dimension,
        )
        self.dimension = dimension
        self._ready = True

    def caught_up(self) -> None:
        """The sink has read all there is for now: build the HNSW index of a table it created,
        if there is none yet. Inserting into an HNSW index costs milliseconds a row (it searches
        the graph for each), so a first load goes into the bare table and the index is built
        once over all of it (CONCURRENTLY: writers are not held meanwhile); later updates go
        through it. Searches before that scan the table exactly."""
        if not self._index_wanted or not self._ready:
            return
        self._index_wanted = False
        if self.dimension > _HNSW_MAX_DIM:
            log.warning(
                "table %s has no vector index: pgvector's HNSW takes at most %d dimensions",
                self.table,
                _HNSW_MAX_DIM,
            )
            return
        if self._has_vector_index():
            return
        import psycopg

        ops = _OPS[self.similarity or "cosine"]
        index = f"{self.table.replace('.', '_')}_embedding_hnsw"
        started = time.monotonic()
        log.info("building the HNSW index of %s (%s)", self.table, ops)
        self._conn.autocommit = True
        try:
            self._conn.execute(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {self.table} "
                f"USING hnsw (embedding {ops})"
            )
        except psycopg.OperationalError as exc:
            self._index_wanted = True  # again at the next catch-up
            raise BackendUnavailable(f"{self.name}: building the index: {exc}") from exc
        finally:
            self._conn.autocommit = False
        log.info("built the HNSW index of %s in %.1f s", self.table, time.monotonic() - started)

    def _has_vector_index(self) -> bool:
        found = self._conn.execute(
            "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = to_regclass(%s) "
            "AND a.amname IN ('hnsw', 'ivfflat')",
            (self.table,),
        ).fetchone()
        self._conn.commit()
        return found is not None

    # --- reading and writing ------------------------------------------------------------------

    def offsets(self) -> Offsets:
        """The offsets stored with the rows: where each source's next record is."""
        rows = self._conn.execute(f"SELECT source, partition, next_offset FROM {self._names()[2]}")
        out = {(source, partition): offset for source, partition, offset in rows.fetchall()}
        self._conn.commit()
        return out

    def write(self, net: Net, offsets: Offsets) -> None:
        """Apply one batch's net changes and store ``offsets``, in one transaction."""
        import psycopg

        try:
            self._write(net, offsets)
            crash_point("postgres:commit")
            self._conn.commit()
        except psycopg.OperationalError as exc:
            self._rollback()
            raise BackendUnavailable(f"{self.name}: {str(exc).strip()}") from exc
        except psycopg.Error as exc:
            self._rollback()
            raise BackendError(f"{self.name}: {str(exc).strip()}") from exc

    def _rollback(self) -> None:
        import psycopg

        with contextlib.suppress(psycopg.Error):
            self._conn.rollback()

    def _write(self, net: Net, offsets: Offsets) -> None:
        table, deleted, offsets_table = self._names()
        upserts, deletes = net.upserts(), net.deletes()
        cur = self._conn.cursor()
        if self.similarity is None:
            self.similarity = next((c.similarity for c in upserts if c.similarity), None)
        if upserts and not self._ready:
            dim = len(upserts[0].vector)
            self._create_table(dim)
        if upserts:
            cur.execute(
                "CREATE TEMP TABLE IF NOT EXISTS stream_nudge_stage (id text, embedding "
                f"vector({self.dimension}), generation bigint) ON COMMIT DELETE ROWS"
            )
            with cur.copy(
                "COPY stream_nudge_stage (id, embedding, generation) FROM STDIN WITH (FORMAT BINARY)"
            ) as copy:
                copy.write(copy_rows(upserts, self.dimension))
            cur.execute(
                f"INSERT INTO {table} AS t (id, embedding, generation, updated_at) "
                "SELECT s.id, s.embedding, s.generation, now() FROM stream_nudge_stage s "
                f"LEFT JOIN {deleted} d ON d.id = s.id "
                "WHERE d.id IS NULL OR d.generation < s.generation "
                "ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, "
                "generation = EXCLUDED.generation, updated_at = EXCLUDED.updated_at "
                "WHERE t.generation < EXCLUDED.generation"
            )
            cur.execute(
                f"DELETE FROM {deleted} d USING stream_nudge_stage s "
                "WHERE d.id = s.id AND d.generation < s.generation"
            )
        marked = [c for c in deletes if c.generation is not None]
        if marked:
            ids = [c.id for c in marked]
            generations = np.array([c.generation for c in marked], dtype=np.int64).tolist()
            if self._ready:
                cur.execute(
                    f"DELETE FROM {table} t USING unnest(%s::text[], %s::bigint[]) AS x(id, g) "
                    "WHERE t.id = x.id AND t.generation < x.g",
                    (ids, generations),
                )
            cur.execute(
                f"INSERT INTO {deleted} (id, generation) SELECT * FROM "
                "unnest(%s::text[], %s::bigint[]) ON CONFLICT (id) DO UPDATE SET "
                f"generation = EXCLUDED.generation WHERE {deleted}.generation < EXCLUDED.generation",
                (ids, generations),
            )
        unmarked = [c.id for c in deletes if c.generation is None]
        if unmarked and self._ready:
            cur.execute(f"DELETE FROM {table} WHERE id = ANY(%s::text[])", (unmarked,))
        if offsets:
            sources, partitions, nexts = zip(
                *((s, p, o) for (s, p), o in sorted(offsets.items())), strict=True
            )
            cur.execute(
                f"INSERT INTO {offsets_table} (source, partition, next_offset) SELECT * FROM "
                "unnest(%s::text[], %s::int[], %s::bigint[]) ON CONFLICT (source, partition) "
                "DO UPDATE SET next_offset = EXCLUDED.next_offset",
                (list(sources), list(partitions), list(nexts)),
            )

    def rows(self) -> int:
        if not self._ready:
            return 0
        count = self._conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0]
        self._conn.commit()
        return count

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
