"""The streaming engine: records in, updates out. No Kafka, no files: sources and sinks do I/O.

``Engine.process(records)`` decodes a batch, applies documents and clicks in order, re-selects
gamma whenever the event count or event time says so (at that exact event, whatever the batching),
and returns the updates to publish: every document whose query sum changed (and every nudged
document after a change of gamma) that moved more than ``publish.min_change`` since it was last
published. ``Engine.finish()`` makes the final selection and publication at the end of input.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from stream_nudge.config import Config, EngineParams
from stream_nudge.core.geometry import unit_rows
from stream_nudge.core.objectives import parse_objective
from stream_nudge.engine.ingest import EventIngest
from stream_nudge.engine.pending import PendingClicks
from stream_nudge.engine.publish import Publisher, fine_tuned
from stream_nudge.engine.queries import QueryMemory
from stream_nudge.engine.scores import SelectionCache
from stream_nudge.engine.select import GammaSelector, SelectionReport
from stream_nudge.engine.state import DocumentTable
from stream_nudge.engine.window import ValidationWindow
from stream_nudge.messages import (
    DeadLetter,
    Decoder,
    DocDelete,
    DocUpsert,
    Record,
    Tombstone,
    Updates,
)

__all__ = ["Changes", "Engine", "SelectionReport", "restore", "snapshot"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Changes:
    """What one call of the engine produced, nothing encoded (a sink encodes: see
    :func:`~stream_nudge.messages.encode_output`).

    For the updates stream, the tombstones come before the updates; dead letters and selection
    reports go their own ways.
    """

    tombstones: list[Tombstone] = field(default_factory=list)
    updates: Updates | None = None
    dead_letters: list[DeadLetter] = field(default_factory=list)
    selections: list[SelectionReport] = field(default_factory=list)

    @property
    def message_count(self) -> int:
        """How many messages for the updates stream (tombstones and updates)."""
        return len(self.tombstones) + (len(self.updates) if self.updates is not None else 0)


class Engine:
    """NUDGE, online. See the module docstring."""

    def __init__(self, params: EngineParams | Config | None = None):
        """An empty engine; ``params`` may be the whole configuration (only the engine's part of
        it is kept)."""
        if isinstance(params, Config):
            params = params.engine_params()
        self.params = params or EngineParams()
        c = self.params
        self.objective = parse_objective(c.objective)
        self.decoder = Decoder.for_config(c)
        self.docs: DocumentTable | None = None
        self.window: ValidationWindow | None = None
        self.gamma = 0.0
        self.generation = 0
        self.dead_letters: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        # Events into the state: splits, re-deliveries, clicks (buffered or waiting for their
        # document), validation queries, and the stream's time.
        self.ingest = EventIngest(c, self.counts, self.dead_letters)
        # Chooses gamma; keeps score tables and per-query curves between selections (not
        # checkpointed: a restored engine computes its first selection from scratch).
        self.selector = GammaSelector(
            c.validation.window,
            c.method,
            self.objective,
            c.gamma.max,
            c.min_improvement,
            c.limits.selection_cache_bytes,
        )
        # Which documents need an update, and their embeddings.
        self.publisher = Publisher(c.method, c.similarity, c.publish.min_change, c.publish.encoding)

    # --- the public verbs -----------------------------------------------------------------------

    def process(self, records: list[Record]) -> Changes:
        """Apply a batch of records; return what to publish."""
        out = Changes()
        # Events come as tuples, their vectors in the rows of one array (Decoder.decode_rows).
        items, vectors = self.decoder.decode_rows(records)
        ingest = self.ingest
        ingest.clicks.batch = vectors
        try:
            at = 0
            while at < len(items):
                item = items[at]
                kind = item.__class__
                if kind is DeadLetter:
                    ingest.reject(item, out)
                elif self.docs is None and kind is DocDelete:  # nothing to delete before any vector
                    self.counts["deletes"] += 1
                    self.counts["deletes_unknown"] += 1
                else:
                    if self.docs is None:
                        self._start(self.decoder.dimension)
                    if kind is tuple:
                        docs, window = self.docs, self.window
                        at = ingest.events(
                            items, vectors, records, at, out, docs, window, self._select
                        )
                        continue
                    if kind is DocUpsert:
                        self._upsert(item)
                    else:
                        self._delete(item, out)
                at += 1
            ingest.flush(self.docs)
        finally:
            ingest.clicks.end_batch()
        ingest.expire(out)
        self._publish(out)
        return out

    def drain_pending(self) -> Changes:
        """End of a replay: the clicks still waiting for their document, as dead letters
        ("pending_at_end"); they wait no more."""
        out = Changes()
        self.ingest.drain(out)
        return out

    def finish(self) -> Changes:
        """End of input: a final selection of gamma, then publication."""
        out = Changes()
        if self.docs is not None:
            self.ingest.flush(self.docs)
        if self.window is not None and len(self.window):
            self._select(out)
        self._publish(out)
        return out

    def adjusted(self) -> tuple[list[str], np.ndarray]:
        """Every live document's id and current fine-tuned embedding, in row order."""
        if self.docs is None:
            return [], np.zeros((0, self.params.dimension or 0), dtype=np.float32)
        rows = np.flatnonzero(self.docs.alive[: self.docs.n_rows])
        return [self.docs.ids[r] for r in rows], self._embeddings(rows)

    @property
    def events(self) -> int:
        """Events applied (re-deliveries and refused events not counted)."""
        return self.ingest.time.events

    @property
    def events_since_selection(self) -> int:
        return self.ingest.time.since_selection

    @property
    def first_clock(self) -> float | None:
        return self.ingest.time.first_clock

    @property
    def pending(self) -> PendingClicks:
        """Clicks waiting for their document."""
        return self.ingest.pending

    @property
    def pending_count(self) -> int:
        return len(self.ingest.pending)

    @property
    def queries(self) -> QueryMemory:
        return self.ingest.queries

    def reselect(self) -> Changes:
        """Re-select gamma now (it is also done automatically), then publish: what :meth:`finish`
        does at the end of input, for a live source that has gone idle."""
        return self.finish()

    # --- state ----------------------------------------------------------------------------------

    def to_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """The engine's whole state as named arrays plus JSON-able metadata.

        Taken between batches (nothing buffered, nothing waiting to be published); each part
        (documents, window, pending clicks, query memory) writes its own. Caches are left out:
        a restored engine computes its first selection from scratch.
        """
        if self.docs is not None:
            self.ingest.flush(self.docs)
        arrays, meta = self.ingest.to_state()
        meta.update(self.scalars())
        if self.docs is not None:
            doc_arrays, doc_meta = self.docs.to_state()
            arrays.update(doc_arrays)
            meta.update(doc_meta)
            window_arrays, meta["window"] = self.window.to_state()
            arrays.update(window_arrays)
        return arrays, meta

    def scalars(self, backlog: bool = True) -> dict:
        """The small part of :meth:`to_state`'s metadata: all but the documents, the window's
        queries, the query memory and the waiting clicks (which a changelog keys one by one).
        Without ``backlog``, also without the documents changed since the last selection (a
        changelog keys those too)."""
        selector = self.selector.to_state(self.docs) if backlog else {}
        return {
            "gamma": self.gamma,
            "generation": self.generation,
            "dead_letters": dict(self.dead_letters),
            "counts": dict(self.counts),
            "dimension": self.decoder.dimension,
            **self.ingest.time.to_state(),
            **self.publisher.to_state(self.docs),
            **selector,
        }

    @classmethod
    def from_state(
        cls, params: EngineParams | Config, arrays: dict[str, np.ndarray], meta: dict
    ) -> Engine:
        """An engine in the state :meth:`to_state` recorded."""
        engine = cls(params)
        engine.gamma = float(meta["gamma"])
        engine.generation = int(meta["generation"])
        engine.dead_letters.update(meta["dead_letters"])
        engine.counts.update(meta["counts"])
        engine.decoder.dimension = meta["dimension"]
        if engine.decoder.dimension is not None:
            engine.decoder.dimension_from = "the checkpoint"
        engine.ingest.restore(arrays, meta)
        # Checkpoints from before decay held no click times: what they hold counts as of now.
        now = engine.ingest.time.now()
        if "originals" in arrays:
            engine.docs = DocumentTable.from_state(arrays, meta, engine.ingest.decay, now)
            engine.window = ValidationWindow.from_state(
                arrays, meta["window"], engine.objective.k, engine.params.validation.window, now
            )
        # The selector first: it also sees the publisher's changes (see Publisher.restore).
        engine.selector.restore(meta, engine.docs)
        engine.publisher.restore(meta, engine.docs)
        return engine

    # --- applying input -----------------------------------------------------------------------

    def _start(self, dim: int) -> None:
        self.docs = DocumentTable(dim, decay=self.ingest.decay)
        self.window = ValidationWindow(self.params.validation.window, dim, self.objective.k)

    def _upsert(self, doc: DocUpsert) -> None:
        unit, _ = unit_rows(doc.vector[None, :])
        row, new = self.docs.upsert(doc.id, unit[0])
        self.counts["upserts"] += 1
        if new:
            self.ingest.document_arrived(doc.id, row, self.docs)
        if self.params.publish.initial:
            self.publisher.force(row)

    def _delete(self, doc: DocDelete, out: Changes) -> None:
        self.ingest.flush(self.docs)
        row = self.docs.delete(doc.id)
        self.counts["deletes"] += 1
        self.ingest.document_deleted(doc.id)
        if row is None:
            self.counts["deletes_unknown"] += 1
            return
        self.publisher.forget(row)
        self.generation += 1
        self.counts["tombstones"] += 1
        out.tombstones.append(Tombstone(doc.id, self.generation))

    # --- gamma ----------------------------------------------------------------------------------

    def _select(self, out: Changes) -> None:
        if self.docs is not None:
            self.ingest.flush(self.docs)
        self.ingest.time.selected()
        if self.docs is None or self.window is None or not len(self.window):
            return
        report = self.selector.select(self.docs, self.window, self.gamma, self.ingest.time.events)
        if report is None:
            return
        if report.changed:
            self.gamma = report.gamma
            self.publisher.gamma_changed = True
        self.counts["selections"] += 1
        out.selections.append(report)
        log.info(
            "gamma %s: %.6g (best %.6g), %s %.4f -> %.4f on %d validation queries, %d nudged documents",
            "changed" if report.changed else "kept",
            self.gamma,
            report.candidate,
            self.objective.name,
            report.value_before,
            report.value_after,
            report.queries,
            report.nudged,
            extra={
                "gamma": self.gamma,
                "candidate": report.candidate,
                "score_before": report.value_before,
                "score_after": report.value_after,
                "validation_queries": report.queries,
                "nudged": report.nudged,
            },
        )

    @property
    def selection_cache(self) -> SelectionCache:
        return self.selector.cache

    @property
    def last_selection(self) -> SelectionReport | None:
        return self.selector.last

    @property
    def selection_history(self) -> list[SelectionReport]:
        return self.selector.history

    # --- publishing -------------------------------------------------------------------------------

    def _embeddings(self, rows: np.ndarray) -> np.ndarray:
        return fine_tuned(self.docs, rows, self.gamma, self.params.method)

    def _publish(self, out: Changes) -> None:
        if self.docs is None:
            return
        updates = self.publisher.publish(self.docs, self.gamma, self.generation)
        if updates is not None:
            out.updates = updates
            self.generation += len(updates)
            self.counts["updates"] += len(updates)


# --- snapshots --------------------------------------------------------------------------------


def snapshot(engine: Engine) -> tuple[dict[str, np.ndarray], dict]:
    """``engine.to_state()``: what a checkpoint stores."""
    return engine.to_state()


def restore(params: EngineParams | Config, arrays: dict[str, np.ndarray], meta: dict) -> Engine:
    """``Engine.from_state(params, arrays, meta)``: an engine in the state a checkpoint holds."""
    return Engine.from_state(params, arrays, meta)
