"""The streaming engine: records in, updates out. No Kafka, no files: sources and sinks do I/O.

``Engine.process(records)`` decodes a batch, applies documents and clicks in order, re-selects
gamma whenever the event count or event time says so (at that exact event, whatever the batching),
and returns the updates to publish: every document whose query sum changed (and every nudged
document after a change of gamma) that moved more than ``publish.min_change`` since it was last
published. ``Engine.finish()`` makes the final selection and publication at the end of input.
"""

from __future__ import annotations

import logging
import math
from collections import Counter

import numpy as np

from stream_nudge.config import Config
from stream_nudge.core.geometry import unit_rows
from stream_nudge.core.objectives import parse_objective
from stream_nudge.engine.pending import PendingClicks, Waiting
from stream_nudge.engine.publish import Publisher, fine_tuned
from stream_nudge.engine.queries import QueryMemory
from stream_nudge.engine.scores import SelectionCache
from stream_nudge.engine.select import GammaSelector, SelectionReport
from stream_nudge.engine.state import Decay, DocumentTable
from stream_nudge.engine.train import ClickBuffer
from stream_nudge.engine.window import ValidationWindow
from stream_nudge.messages import (
    DeadLetter,
    Decoder,
    DocDelete,
    DocUpsert,
    Record,
    Updates,
    encode_event,
    encode_tombstone,
    query_hash,
)

__all__ = ["Engine", "Output", "SelectionReport", "restore", "snapshot"]

log = logging.getLogger(__name__)

# The time of a click when decay is off: nothing reads it.
_TIMELESS = (math.nan, math.nan)


class Output:
    """What one call produced, in the order a sink must write it.

    ``messages`` holds ``(key, value, line, generation)`` for the updates stream: ``value`` is the
    encoded update, or None for a deleted document (a Kafka tombstone); ``line`` is the JSONL form
    (the update itself, or ``{"id": ..., "deleted": true}``). Tombstones come first, then the
    updates, which are kept unencoded in ``updates`` until ``messages`` is first read: a sink may
    instead take :attr:`tombstones` and :attr:`updates` and encode the updates elsewhere.
    """

    __slots__ = ("_messages", "dead_letters", "selections", "tombstones", "updates")

    def __init__(self):
        self.tombstones: list[tuple[str, None, bytes, int]] = []
        self.updates: Updates | None = None
        self.dead_letters: list[DeadLetter] = []
        self.selections: list[SelectionReport] = []
        self._messages: list[tuple[str, bytes | None, bytes, int]] | None = None

    @property
    def messages(self) -> list[tuple[str, bytes | None, bytes, int]]:
        if self._messages is None:
            self._messages = list(self.tombstones)
            if self.updates is not None:
                self._messages.extend(self.updates.encoded())
        return self._messages

    @property
    def message_count(self) -> int:
        """How many messages (tombstones and updates), without encoding any."""
        return len(self.tombstones) + (len(self.updates) if self.updates is not None else 0)


class Engine:
    """NUDGE, online. See the module docstring."""

    def __init__(self, config: Config | None = None):
        self.config = config or Config()
        c = self.config
        self.objective = parse_objective(c.objective)
        self.decoder = Decoder.for_config(c)
        self.docs: DocumentTable | None = None
        self.window: ValidationWindow | None = None
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
        # Clicks waiting for their document.
        self.pending = PendingClicks(
            c.pending.max_events, c.pending.max_age_events, c.pending.max_age_seconds
        )
        self._decay = (
            Decay(c.decay.half_life_events, c.decay.half_life_seconds) if c.decay.enabled else None
        )
        self.gamma = 0.0
        self.generation = 0
        self.events = 0
        self.events_since_selection = 0
        self.clock: float | None = None
        self.first_clock: float | None = None  # the first event time seen (decay's origin)
        self.last_selection_clock: float | None = None
        self._fraction = c.validation.fraction
        # is_validation's rule, with its threshold computed once: the hash is per event.
        self._validation_below = c.validation.fraction * 2.0**64
        # Each recent query's split and the documents it named: a query belongs to one split,
        # and a re-delivered event changes nothing.
        self.queries = QueryMemory(c.queries.remember)
        self.dead_letters: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        # What changed since the last publication, and the updates it calls for.
        self.publisher = Publisher(c.method, c.similarity, c.publish.min_change, c.publish.encoding)
        # Training clicks not yet added to the sums (applied in order, before anything that
        # could change what a row means).
        self._clicks = ClickBuffer(timed=self._decay is not None)

    # --- the public verbs -----------------------------------------------------------------------

    def process(self, records: list[Record]) -> Output:
        """Apply a batch of records; return what to publish."""
        out = Output()
        # Events come as tuples, their vectors in the rows of one array (Decoder.decode_rows).
        items, vectors = self.decoder.decode_rows(records)
        self._clicks.batch = vectors
        try:
            at = 0
            while at < len(items):
                item = items[at]
                kind = item.__class__
                if kind is DeadLetter:
                    self._dead(item, out)
                elif self.docs is None and kind is DocDelete:  # nothing to delete before any vector
                    self.counts["deletes"] += 1
                    self.counts["deletes_unknown"] += 1
                else:
                    if self.docs is None:
                        self._start(self.decoder.dimension)
                    if kind is tuple:
                        at = self._events(items, vectors, records, at, out)
                        continue
                    if kind is DocUpsert:
                        self._upsert(item)
                    else:
                        self._delete(item, out)
                at += 1
            self._flush()
        finally:
            self._clicks.end_batch()
        self._expire(out)
        self._publish(out)
        return out

    @property
    def pending_count(self) -> int:
        """Clicks waiting for their document."""
        return len(self.pending)

    def drain_pending(self) -> Output:
        """End of a replay: the clicks still waiting for their document, as dead letters
        ("pending_at_end"); they wait no more."""
        out = Output()
        for doc_id, waiting in self.pending.drain():
            self._dead_click("pending_at_end", doc_id, waiting, out)
        return out

    def finish(self) -> Output:
        """End of input: a final selection of gamma, then publication."""
        out = Output()
        self._flush()
        if self.window is not None and len(self.window):
            self._select(out)
        self._publish(out)
        return out

    def adjusted(self) -> tuple[list[str], np.ndarray]:
        """Every live document's id and current fine-tuned embedding, in row order."""
        if self.docs is None:
            return [], np.zeros((0, self.config.dimension or 0), dtype=np.float32)
        rows = np.flatnonzero(self.docs.alive[: self.docs.n_rows])
        return [self.docs.ids[r] for r in rows], self._embeddings(rows)

    def reselect(self) -> Output:
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
        self._flush()
        arrays: dict[str, np.ndarray] = {}
        meta: dict = {
            "gamma": self.gamma,
            "generation": self.generation,
            "events": self.events,
            "events_since_selection": self.events_since_selection,
            "clock": self.clock,
            "first_clock": self.first_clock,
            "last_selection_clock": self.last_selection_clock,
            "dead_letters": dict(self.dead_letters),
            "counts": dict(self.counts),
            "dimension": self.decoder.dimension,
            **self.publisher.to_state(self.docs),
            **self.selector.to_state(self.docs),
        }
        if self.docs is not None:
            doc_arrays, doc_meta = self.docs.to_state()
            arrays.update(doc_arrays)
            meta.update(doc_meta)
            window_arrays, meta["window"] = self.window.to_state()
            arrays.update(window_arrays)
        pending_arrays, pending_meta = self.pending.to_state()
        arrays.update(pending_arrays)
        meta.update(pending_meta)
        meta.update(self.queries.to_state())
        return arrays, meta

    @classmethod
    def from_state(cls, config: Config, arrays: dict[str, np.ndarray], meta: dict) -> Engine:
        """An engine in the state :meth:`to_state` recorded."""
        engine = cls(config)
        engine.gamma = float(meta["gamma"])
        engine.generation = int(meta["generation"])
        engine.events = int(meta["events"])
        engine.events_since_selection = int(meta["events_since_selection"])
        engine.clock = meta["clock"]
        engine.first_clock = meta.get("first_clock", meta["clock"])
        # Checkpoints from before decay held no click times: what they hold counts as of now.
        now = (float(engine.events), engine.clock if engine.clock is not None else math.nan)
        engine.last_selection_clock = meta["last_selection_clock"]
        engine.dead_letters = Counter(meta["dead_letters"])
        engine.counts = Counter(meta["counts"])
        engine.decoder.dimension = meta["dimension"]
        if engine.decoder.dimension is not None:
            engine.decoder.dimension_from = "the checkpoint"
        if "originals" in arrays:
            engine.docs = DocumentTable.from_state(arrays, meta, engine._decay, now)
            engine.window = ValidationWindow.from_state(
                arrays, meta["window"], engine.objective.k, config.validation.window, now
            )
        # The selector first: it also sees the publisher's changes (see Publisher.restore).
        engine.selector.restore(meta, engine.docs)
        engine.publisher.restore(meta, engine.docs)
        p = config.pending
        engine.pending = PendingClicks.from_state(
            arrays, meta, now, p.max_events, p.max_age_events, p.max_age_seconds
        )
        engine.queries = QueryMemory.from_state(config.queries.remember, meta)
        return engine

    # --- applying input -----------------------------------------------------------------------

    def _start(self, dim: int) -> None:
        self.docs = DocumentTable(dim, decay=self._decay)
        self.window = ValidationWindow(self.config.validation.window, dim, self.objective.k)

    def _dead(self, letter: DeadLetter, out: Output) -> None:
        self.dead_letters[letter.reason] += 1
        out.dead_letters.append(letter)

    def _upsert(self, doc: DocUpsert) -> None:
        unit, _ = unit_rows(doc.vector[None, :])
        row, new = self.docs.upsert(doc.id, unit[0])
        self.counts["upserts"] += 1
        if new:
            waiting = self.pending.take(doc.id)
            if waiting:
                for click in waiting:
                    self._clicks.add(row, click.weight, click.vector, click.when)
                self._flush()
        if self.config.publish.initial:
            self.publisher.force(row)

    def _delete(self, doc: DocDelete, out: Output) -> None:
        self._flush()
        row = self.docs.delete(doc.id)
        self.counts["deletes"] += 1
        # The document these clicks waited for will not come now.
        dropped = self.pending.drop(doc.id)
        if dropped:
            self.counts["pending_dropped_deleted"] += dropped
        if row is None:
            self.counts["deletes_unknown"] += 1
            return
        self.publisher.forget(row)
        self.generation += 1
        self.counts["tombstones"] += 1
        out.tombstones.append(
            (doc.id, None, encode_tombstone(doc.id, self.generation), self.generation)
        )

    def _events(
        self, items: list, vectors: np.ndarray, records: list[Record], at: int, out: Output
    ) -> int:
        """Apply the run of events that starts at ``items[at]``; return where the run ends.

        The hot path of ingest, once per event: look-ups are hoisted out of the loop, counters
        kept in locals, and a training click costs three appends (four with decay). A selection
        falls due at the exact event the count or the event time says, whatever the batching.
        """
        gamma = self.config.gamma
        every_events, every_seconds = gamma.every_events, gamma.every_seconds
        decay = self._decay
        get_row = self.docs.row_of.get
        memory = self.queries
        memory.make_room()
        recent, older = memory.current, memory.previous.get
        dedupe = self.config.queries.dedupe
        below = self._validation_below
        clicks = self._clicks
        click_row, click_weight, click_pick = (
            clicks.rows.append,
            clicks.weights.append,
            clicks.picks.append,
        )
        click_when = clicks.whens.append
        events, since, train = self.events, self.events_since_selection, 0
        duplicates = redelivered = 0
        try:
            while at < len(items):
                event = items[at]
                if event.__class__ is not tuple:
                    break
                query_id, doc_ids, weight, split, ts = event
                # A query belongs to one split (its first event's, given or by the stable hash),
                # and a (query, document) pair counts once (see queries.py).
                entry = recent.get(query_id) or older(query_id)
                if entry is None:
                    if split is None:
                        # is_validation(), with its threshold computed once.
                        split = "validation" if query_hash(query_id) < below else "train"
                    recent[query_id] = (split, doc_ids)
                else:
                    known, named = entry
                    if split is None:
                        split = known
                    elif split != known:
                        self._split_conflict(query_id, split, known, records[at], out)
                        at += 1
                        continue
                    if dedupe:
                        new_ids = tuple(d for d in doc_ids if d not in named)
                        if len(new_ids) < len(doc_ids):
                            duplicates += len(doc_ids) - len(new_ids)
                            if not new_ids:
                                # A re-delivery: not an event (no count, no clock, no selection).
                                redelivered += 1
                                at += 1
                                continue
                            doc_ids = new_ids
                        recent[query_id] = (known, named + doc_ids)
                    elif query_id not in recent:
                        recent[query_id] = entry  # kept with the current generation
                events += 1
                since += 1
                if ts is None:
                    ts = records[at].timestamp
                if ts is not None:
                    if self.clock is None:
                        self.first_clock = ts
                    if self.clock is None or ts > self.clock:
                        self.clock = ts
                    if self.last_selection_clock is None:
                        self.last_selection_clock = self.clock
                # The click's time, which only decay reads: a click without one happens at the
                # latest time seen. Without decay no tuple is built here.
                when = _TIMELESS
                if decay is not None:
                    clock = self.clock if self.clock is not None else math.nan
                    when = (float(events), ts if ts is not None else clock)
                if split == "train":
                    train += 1
                    for doc_id in doc_ids:
                        row = get_row(doc_id)
                        if row is None:
                            self._pend(
                                doc_id,
                                query_id,
                                vectors[at],
                                weight,
                                when,
                                records[at],
                                out,
                                events,
                            )
                        else:
                            click_row(row)
                            click_weight(weight)
                            click_pick(at)
                            if decay is not None:
                                click_when(when)
                else:
                    vector, record = vectors[at], records[at]
                    self._validation_event(query_id, vector, doc_ids, weight, record, when, out)
                at += 1
                if (every_events and since >= every_events) or (
                    every_seconds and ts is not None and self._time_due(every_seconds)
                ):
                    self.events, self.events_since_selection = events, since
                    self._select(out)  # flushes (the click lists are emptied in place)
                    events, since = self.events, self.events_since_selection
        finally:
            self.events, self.events_since_selection = events, since
            self.counts["train_events"] += train
            if duplicates:
                self.counts["duplicate_pairs"] += duplicates
                self.counts["duplicate_events"] += redelivered
        return at

    def _split_conflict(self, query_id: str, split: str, known: str, record, out) -> None:
        # Counted in both splits, the query would validate documents it trained (a validation
        # score of 1.0 where there was nothing to learn): the later event is refused.
        detail = f"query {query_id!r} came as {known} before; a query belongs to one split"
        self._dead(DeadLetter("split_conflict", detail, record), out)

    def _validation_event(
        self, query_id: str, vector, doc_ids, weight: float, record: Record, when, out: Output
    ) -> None:
        self.counts["validation_events"] += 1
        for doc_id in doc_ids:
            evicted = self.window.add(query_id, vector, doc_id, weight, when)
            row = self.docs.row_of.get(doc_id)
            if row is not None:
                self.window.forget_answer(self.window.slot_of[query_id], row)
            if evicted is not None and self.config.validation.fold_evicted:
                _, folded, answers, born = evicted
                self.counts["folded_queries"] += 1
                folded_id = evicted[0]
                for answer_id, answer_weight in answers.items():
                    self._train(answer_id, folded_id, folded, answer_weight, born, record, out)

    def _train(self, doc_id, query_id, vector: np.ndarray, weight: float, when, record, out):
        row = self.docs.row_of.get(doc_id)
        if row is not None:
            self._clicks.add(row, weight, vector, when)
        else:
            self._pend(doc_id, query_id, vector, weight, when, record, out, self.events)

    def _pend(self, doc_id, query_id, vector, weight: float, when, record, out, events: int):
        """A click on a document not seen yet waits for it, while the pending store has room."""
        born = (float(events), self.clock if self.clock is not None else math.nan)
        if not self.pending.add(doc_id, query_id, vector, weight, when, born):
            detail = f"document {doc_id!r} not seen yet and the pending store is full"
            self._dead(DeadLetter("pending_overflow", detail, record), out)

    def _expire(self, out: Output) -> None:
        """Waiting clicks past their age become dead letters."""
        for doc_id, waiting in self.pending.expire(self.events, self.clock):
            self._dead_click("pending_expired", doc_id, waiting, out)

    def _dead_click(self, reason: str, doc_id: str, click: Waiting, out: Output) -> None:
        """A waiting click as a dead letter, written as the event it was (so that it can be sent
        again once its document exists)."""
        value = encode_event(click.query_id, click.vector, doc_id, click.weight, "train")
        detail = f"document {doc_id!r} did not arrive"
        self._dead(DeadLetter(reason, detail, Record("events", value)), out)

    def _flush(self) -> None:
        """Add buffered training clicks to the query sums."""
        if not len(self._clicks):
            return
        rows, weights, vectors, times = self._clicks.take()
        now = (float(self.events), self.clock if self.clock is not None else math.nan)
        origin = self.first_clock if self.first_clock is not None else math.nan
        self.docs.add(rows, weights, vectors, times, now, origin)

    # --- gamma ----------------------------------------------------------------------------------

    def _time_due(self, every_seconds: float) -> bool:
        return (
            self.clock is not None
            and self.last_selection_clock is not None
            and self.clock - self.last_selection_clock >= every_seconds
        )

    def _select(self, out: Output) -> None:
        self._flush()
        self.events_since_selection = 0
        self.last_selection_clock = self.clock
        if self.docs is None or self.window is None or not len(self.window):
            return
        report = self.selector.select(self.docs, self.window, self.gamma, self.events)
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
        return fine_tuned(self.docs, rows, self.gamma, self.config.method)

    def _publish(self, out: Output) -> None:
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


def restore(config: Config, arrays: dict[str, np.ndarray], meta: dict) -> Engine:
    """``Engine.from_state(config, arrays, meta)``: an engine in the state a checkpoint holds."""
    return Engine.from_state(config, arrays, meta)
