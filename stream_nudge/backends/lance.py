"""LanceDB as a search backend (embedded: a directory on disk).

``lancedb://PATH?table=NAME`` holds three tables: ``NAME`` (``id``, ``vector`` of float32 x d,
``generation``, ``updated_at``), what a search queries; ``NAME_deleted`` (``id``, ``generation``
of each deletion, so that an older update arriving later cannot bring a row back); and
``NAME_offsets`` (``source``, ``partition``, ``next_offset``: where the sink resumes).

LanceDB commits one table at a time, so a batch is three commits, in this order: the rows (one
``merge_insert`` by id that updates a row only from a higher generation, inserts new ids and
deletes the batch's deleted ids whose row is older: one new table version), then the deletion
marks, then the offsets. A crash between them leaves offsets behind the rows, and the sink applies
the batch again on restart: that changes nothing, because every step keeps the higher generation
(an update already applied is not newer than itself; a deletion already applied finds no row).
So the table ends as if each record had been applied once.

The vector index (IVF-PQ, for the updates' similarity) is created once the table holds
``index_min_rows`` rows: below that an exact scan is fast enough and an index would be trained on
too few vectors. Rows written after it are searched exactly until :meth:`LanceBackend.optimize`
(every ``optimize_interval_s``) folds them in and compacts the small files many commits leave.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

from stream_nudge.backends.base import BackendError, Offsets
from stream_nudge.backends.updates import Net
from stream_nudge.faults import crash_point

__all__ = ["LanceBackend", "parse_lance_url"]

log = logging.getLogger(__name__)

_METRIC = {"cosine": "cosine", "dot": "dot"}


def parse_lance_url(url: str, default_table: str) -> tuple[str, str]:
    """``(directory, table)`` of ``lancedb://PATH?table=NAME``.

    >>> parse_lance_url("lancedb:///var/lib/lance?table=docs", "t")
    ('/var/lib/lance', 'docs')
    >>> parse_lance_url("lancedb://./data", "emb")
    ('./data', 'emb')
    """
    rest = url[len("lancedb://") :]
    path, _, query = rest.partition("?")
    table = default_table
    for pair in filter(None, query.split("&")):
        key, _, value = pair.partition("=")
        if key != "table":
            raise BackendError(f"{url}: unknown parameter {key!r} (only table=NAME)")
        table = value
    if not path:
        raise BackendError(f"{url}: no directory (lancedb://PATH?table=NAME)")
    return path, table


def _quoted(ids) -> str:
    """A SQL list of string literals (quotes doubled)."""
    return ", ".join("'" + i.replace("'", "''") + "'" for i in ids)


class LanceBackend:
    """Writes the updates into a LanceDB table; see the module's docstring."""

    def __init__(
        self,
        url: str,
        table: str,
        create: bool = False,
        dimension: int | None = None,
        index: bool = True,
        index_min_rows: int = 100_000,
        optimize_interval_s: float = 600.0,
    ):
        self.path, self.table = parse_lance_url(url, table)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.table):
            raise BackendError(f"table {self.table!r}: letters, digits, _ . - only")
        self.create = create
        self.dimension = dimension
        self.index = index
        self.index_min_rows = index_min_rows
        self.optimize_interval_s = optimize_interval_s
        self.name = f"lancedb {self.path} table {self.table}"
        self._db = None
        self._rows = self._deleted = self._offsets = None
        self._metric = "cosine"
        self._indexed = False
        self._last_optimize = time.monotonic()

    def open(self) -> None:
        import lancedb

        if not self.create and not Path(self.path).is_dir():
            raise BackendError(f"{self.name}: the directory does not exist (--create makes it)")
        self._db = lancedb.connect(self.path)
        self._rows = self._open(self.table)
        if self._rows is not None:
            field = self._rows.schema.field("vector")
            dim = field.type.list_size
            if self.dimension is not None and dim != self.dimension:
                raise BackendError(
                    f"{self.name} holds {dim}-d vectors, but the updates are {self.dimension}-d"
                )
            self.dimension = dim
            self._indexed = any("vector" in i.columns for i in self._rows.list_indices())
        elif not self.create:
            raise BackendError(f"{self.name} does not exist: start the sink with --create")
        import pyarrow as pa

        for suffix, schema in (
            (
                "_deleted",
                pa.schema([pa.field("id", pa.string(), False), ("generation", pa.int64())]),
            ),
            (
                "_offsets",
                pa.schema(
                    [
                        pa.field("source", pa.string(), False),
                        pa.field("partition", pa.int32(), False),
                        ("next_offset", pa.int64()),
                    ]
                ),
            ),
        ):
            name = self.table + suffix
            table = self._open(name)  # (an empty table is falsy: no `or`)
            if table is None:
                table = self._db.create_table(name, schema=schema)
            if suffix == "_deleted":
                self._deleted = table
            else:
                self._offsets = table

    def _open(self, name: str):
        """The table ``name``, or None if there is none."""
        try:
            return self._db.open_table(name)
        except ValueError as exc:
            if "not found" not in str(exc):
                raise
            return None

    def _create(self, dimension: int, similarity: str | None) -> None:
        import pyarrow as pa

        schema = pa.schema(
            [
                pa.field("id", pa.string(), False),
                pa.field("vector", pa.list_(pa.float32(), dimension)),
                ("generation", pa.int64()),
                ("updated_at", pa.timestamp("us", tz="UTC")),
            ]
        )
        self._rows = self._db.create_table(self.table, schema=schema)
        self.dimension = dimension
        self._metric = _METRIC[similarity or "cosine"]
        log.info("created %s (%d-d vectors)", self.name, dimension)

    def offsets(self) -> Offsets:
        table = self._offsets.to_arrow().to_pylist()
        return {(r["source"], r["partition"]): r["next_offset"] for r in table}

    def _generations(self, table, ids: list[str]) -> dict[str, int]:
        if not ids or table is None:
            return {}
        found = (
            table.search()
            .where(f"id IN ({_quoted(ids)})")
            .select(["id", "generation"])
            .limit(None)
            .to_arrow()
        )
        return dict(zip(found["id"].to_pylist(), found["generation"].to_pylist(), strict=True))

    def write(self, net: Net, offsets: Offsets) -> None:
        import pyarrow as pa

        upserts, deletes = net.upserts(), net.deletes()
        if upserts and self._rows is None:
            self._create(
                len(upserts[0].vector), next((c.similarity for c in upserts if c.similarity), None)
            )
        marks = self._generations(self._deleted, [c.id for c in upserts])
        upserts = [c for c in upserts if c.id not in marks or marks[c.id] < c.generation]
        current = self._generations(self._rows, [c.id for c in deletes])
        gone = [
            c.id
            for c in deletes
            if c.id in current and (c.generation is None or current[c.id] < c.generation)
        ]
        if upserts:
            now = pa.array(
                np.full(len(upserts), time.time_ns() // 1000), pa.timestamp("us", tz="UTC")
            )
            vectors = np.stack([c.vector for c in upserts]).astype(np.float32, copy=False)
            data = pa.table(
                {
                    "id": pa.array([c.id for c in upserts], pa.string()),
                    "vector": pa.FixedSizeListArray.from_arrays(
                        pa.array(vectors.ravel()), self.dimension
                    ),
                    "generation": pa.array([c.generation for c in upserts], pa.int64()),
                    "updated_at": now,
                },
                schema=self._rows.schema,
            )
            merge = (
                self._rows.merge_insert("id")
                .when_matched_update_all(where="target.generation < source.generation")
                .when_not_matched_insert_all()
            )
            if gone:
                merge = merge.when_not_matched_by_source_delete(f"id IN ({_quoted(gone)})")
            merge.execute(data)
        elif gone:
            self._rows.delete(f"id IN ({_quoted(gone)})")
        crash_point("lancedb:rows")
        new_marks = [c for c in deletes if c.generation is not None]
        superseded = [c.id for c in upserts if c.id in marks]
        if new_marks or superseded:
            marks_data = pa.table(
                {
                    "id": pa.array([c.id for c in new_marks], pa.string()),
                    "generation": pa.array([c.generation for c in new_marks], pa.int64()),
                },
                schema=self._deleted.schema,
            )
            merge = (
                self._deleted.merge_insert("id")
                .when_matched_update_all(where="target.generation < source.generation")
                .when_not_matched_insert_all()
            )
            if superseded:
                merge = merge.when_not_matched_by_source_delete(f"id IN ({_quoted(superseded)})")
            merge.execute(marks_data)
        crash_point("lancedb:marks")
        if offsets:
            items = sorted(offsets.items())
            data = pa.table(
                {
                    "source": pa.array([s for (s, _), _ in items], pa.string()),
                    "partition": pa.array([p for (_, p), _ in items], pa.int32()),
                    "next_offset": pa.array([o for _, o in items], pa.int64()),
                },
                schema=self._offsets.schema,
            )
            (
                self._offsets.merge_insert(["source", "partition"])
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(data)
            )
        self._maintain()

    def _maintain(self) -> None:
        """The vector index once the table is large enough; optimize now and then."""
        if self._rows is None:
            return
        if self.index and not self._indexed and self._rows.count_rows() >= self.index_min_rows:
            started = time.monotonic()
            self._rows.create_index(metric=self._metric, vector_column_name="vector")
            self._indexed = True
            log.info(
                "created the vector index of %s (IVF-PQ, %s) in %.1f s",
                self.name,
                self._metric,
                time.monotonic() - started,
            )
        if time.monotonic() - self._last_optimize >= self.optimize_interval_s:
            self.optimize()

    def optimize(self) -> None:
        """Compact the files of many small commits, fold new rows into the index, and drop
        table versions older than an hour (a reader on an old version has long moved on)."""
        for table in (self._rows, self._deleted, self._offsets):
            if table is not None:
                table.optimize(cleanup_older_than=timedelta(hours=1))
        self._last_optimize = time.monotonic()

    def caught_up(self) -> None:
        """Nothing: the vector index follows the table's size (:meth:`_maintain`)."""

    def rows(self) -> int:
        return 0 if self._rows is None else self._rows.count_rows()

    def close(self) -> None:
        self._db = self._rows = self._deleted = self._offsets = None
