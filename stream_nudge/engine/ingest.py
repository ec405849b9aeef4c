"""Events into the engine's state: splits, re-deliveries, training clicks, validation queries.

:class:`EventIngest` applies a run of decoded events in order. For each event it settles the
query's split (one split per query id, see ``queries.py``) and drops the (query, document) pairs
already applied; it counts the event and moves the stream's time (:class:`StreamTime`); a training
click goes to the click buffer (or waits in the pending store for its document), a validation
event into the window. A selection of gamma falls due at the exact event the count or the event
time says, whatever the batching: the engine's ``select`` is called there.

It owns what only ingest needs (the query memory, the click buffer, the pending clicks, the
stream's time) and writes it in a checkpoint; the documents and the window are the engine's and
are handed to each call.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stream_nudge.config import EngineParams
from stream_nudge.engine.pending import PendingClicks, Waiting
from stream_nudge.engine.queries import QueryMemory
from stream_nudge.engine.slots import Decay
from stream_nudge.engine.state import DocumentTable
from stream_nudge.engine.train import ClickBuffer
from stream_nudge.engine.window import ValidationWindow
from stream_nudge.messages import DeadLetter, Record, encode_event, query_hash, validation_below

__all__ = ["EventIngest", "StreamTime"]

# The time of a click when decay is off: nothing reads it.
_TIMELESS = (math.nan, math.nan)


@dataclass(slots=True)
class StreamTime:
    """How far the stream has come: events counted, and event time (seconds, when events carry
    it or their records have a timestamp)."""

    events: int = 0
    since_selection: int = 0
    clock: float | None = None  # the latest event time seen
    first_clock: float | None = None  # the first (decay's origin)
    last_selection_clock: float | None = None

    def now(self) -> tuple[float, float]:
        """(event count, seconds), NaN for seconds not known yet: a click's or a sum's time."""
        return (float(self.events), self.clock if self.clock is not None else math.nan)

    def time_due(self, every_seconds: float) -> bool:
        return (
            self.clock is not None
            and self.last_selection_clock is not None
            and self.clock - self.last_selection_clock >= every_seconds
        )

    def selected(self) -> None:
        self.since_selection = 0
        self.last_selection_clock = self.clock

    def to_state(self) -> dict:
        return {
            "events": self.events,
            "events_since_selection": self.since_selection,
            "clock": self.clock,
            "first_clock": self.first_clock,
            "last_selection_clock": self.last_selection_clock,
        }

    @classmethod
    def from_state(cls, meta: dict) -> StreamTime:
        return cls(
            int(meta["events"]),
            int(meta["events_since_selection"]),
            meta["clock"],
            meta.get("first_clock", meta["clock"]),
            meta["last_selection_clock"],
        )


class EventIngest:
    """Applies events (see the module docstring)."""

    def __init__(self, params: EngineParams, counts: Counter, dead_letters: Counter):
        self.params = params
        c = params
        self.decay = (
            Decay(c.decay.half_life_events, c.decay.half_life_seconds) if c.decay.enabled else None
        )
        self.time = StreamTime()
        # Each recent query's split and the documents it named.
        self.queries = QueryMemory(c.queries.remember)
        # Training clicks not yet added to the sums (added in order, before anything that could
        # change what a row means).
        self.clicks = ClickBuffer(timed=self.decay is not None)
        # Clicks waiting for their document.
        self.pending = PendingClicks(
            c.pending.max_events, c.pending.max_age_events, c.pending.max_age_seconds
        )
        # is_validation's rule, with its threshold computed once: the hash is per event.
        self._validation_below = validation_below(c.validation.fraction)
        self.counts = counts
        self.dead_letters = dead_letters

    # --- state ----------------------------------------------------------------------------------

    def to_state(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays, meta = self.pending.to_state()
        meta.update(self.time.to_state())
        meta.update(self.queries.to_state())
        return arrays, meta

    def restore(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """The state :meth:`to_state` recorded (in place: the counters stay shared)."""
        self.time = StreamTime.from_state(meta)
        p = self.params.pending
        self.pending = PendingClicks.from_state(
            arrays, meta, self.time.now(), p.max_events, p.max_age_events, p.max_age_seconds
        )
        self.queries = QueryMemory.from_state(self.params.queries.remember, meta)

    # --- documents ------------------------------------------------------------------------------

    def reject(self, letter: DeadLetter, out) -> None:
        """A record refused: counted by reason, and handed on."""
        self.dead_letters[letter.reason] += 1
        out.dead_letters.append(letter)

    def document_arrived(self, doc_id: str, row: int, docs: DocumentTable) -> None:
        """A new document: the clicks that waited for it go into its sum now."""
        waiting = self.pending.take(doc_id)
        if waiting:
            for click in waiting:
                self.clicks.add(row, click.weight, click.vector, click.when)
            self.flush(docs)

    def document_deleted(self, doc_id: str) -> None:
        """The document the clicks waiting for it waited for will not come now."""
        dropped = self.pending.drop(doc_id)
        if dropped:
            self.counts["pending_dropped_deleted"] += dropped

    def flush(self, docs: DocumentTable) -> None:
        """Add buffered training clicks to the query sums."""
        if not len(self.clicks):
            return
        rows, weights, vectors, times = self.clicks.take()
        t = self.time
        origin = t.first_clock if t.first_clock is not None else math.nan
        docs.add(rows, weights, vectors, times, t.now(), origin)

    # --- events ---------------------------------------------------------------------------------

    def events(
        self,
        items: list,
        vectors: np.ndarray,
        records: list[Record],
        at: int,
        out,
        docs: DocumentTable,
        window: ValidationWindow,
        select: Callable,
    ) -> int:
        """Apply the run of events that starts at ``items[at]``; return where the run ends.

        The hot path of ingest, once per event: look-ups are hoisted out of the loop, counters
        kept in locals, and a training click costs three appends (four with decay). ``select(out)``
        is called where a selection falls due (it flushes the click buffer).
        """
        gamma = self.params.gamma
        every_events, every_seconds = gamma.every_events, gamma.every_seconds
        decay = self.decay
        get_row = docs.row_of.get
        memory = self.queries
        memory.make_room()
        recent, older = memory.current, memory.previous.get
        dedupe = self.params.queries.dedupe
        below = self._validation_below
        clicks = self.clicks
        click_row, click_weight, click_pick = (
            clicks.rows.append,
            clicks.weights.append,
            clicks.picks.append,
        )
        click_when = clicks.whens.append
        t = self.time
        events, since, train = t.events, t.since_selection, 0
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
                        self._split_conflict(query_id, known, records[at], out)
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
                        if query_id in recent:
                            # Moved to the end: what changed since the last commit is then
                            # the dict's tail (the changelog writer reads it backwards).
                            del recent[query_id]
                        recent[query_id] = (known, named + doc_ids)
                    elif query_id not in recent:
                        recent[query_id] = entry  # kept with the current generation
                events += 1
                since += 1
                if ts is None:
                    ts = records[at].timestamp
                if ts is not None:
                    if t.clock is None:
                        t.first_clock = ts
                    if t.clock is None or ts > t.clock:
                        t.clock = ts
                    if t.last_selection_clock is None:
                        t.last_selection_clock = t.clock
                # The click's time, which only decay reads: a click without one happens at the
                # latest time seen. Without decay no tuple is built here.
                when = _TIMELESS
                if decay is not None:
                    clock = t.clock if t.clock is not None else math.nan
                    when = (float(events), ts if ts is not None else clock)
                if split == "train":
                    train += 1
                    for doc_id in doc_ids:
                        row = get_row(doc_id)
                        if row is None:
                            click = (query_id, vectors[at], weight, when)
                            self._pend(doc_id, click, records[at], out, events)
                        else:
                            click_row(row)
                            click_weight(weight)
                            click_pick(at)
                            if decay is not None:
                                click_when(when)
                else:
                    click = (query_id, vectors[at], weight, when)
                    self._validation_event(click, doc_ids, records[at], out, docs, window, events)
                at += 1
                if (every_events and since >= every_events) or (
                    every_seconds and ts is not None and t.time_due(every_seconds)
                ):
                    t.events, t.since_selection = events, since
                    select(out)  # flushes (the click lists are emptied in place)
                    events, since = t.events, t.since_selection
        finally:
            t.events, t.since_selection = events, since
            self.counts["train_events"] += train
            if duplicates:
                self.counts["duplicate_pairs"] += duplicates
                self.counts["duplicate_events"] += redelivered
        return at

    def _split_conflict(self, query_id: str, known: str, record: Record, out) -> None:
        # Counted in both splits, the query would validate documents it trained (a validation
        # score of 1.0 where there was nothing to learn): the later event is refused.
        detail = f"query {query_id!r} came as {known} before; a query belongs to one split"
        self.reject(DeadLetter("split_conflict", detail, record), out)

    def _validation_event(self, click, doc_ids, record: Record, out, docs, window, events) -> None:
        """A validation query's answers into the window; the query the window evicts for it
        becomes training clicks (``validation.fold_evicted``), which may wait for their
        documents as of this event (``events``: the count with it)."""
        query_id, vector, weight, when = click
        self.counts["validation_events"] += 1
        for doc_id in doc_ids:
            evicted = window.add(query_id, vector, doc_id, weight, when)
            row = docs.row_of.get(doc_id)
            if row is not None:
                window.forget_answer(window.slot_of[query_id], row)
            if evicted is not None and self.params.validation.fold_evicted:
                folded_id, folded, answers, born = evicted
                self.counts["folded_queries"] += 1
                for answer_id, answer_weight in answers.items():
                    answer_row = docs.row_of.get(answer_id)
                    if answer_row is not None:
                        self.clicks.add(answer_row, answer_weight, folded, born)
                    else:
                        folded_click = (folded_id, folded, answer_weight, born)
                        self._pend(answer_id, folded_click, record, out, events)

    def _pend(self, doc_id: str, click, record: Record, out, events: int) -> None:
        """A click on a document not seen yet waits for it, while the pending store has room."""
        query_id, vector, weight, when = click
        clock = self.time.clock
        born = (float(events), clock if clock is not None else math.nan)
        if not self.pending.add(doc_id, query_id, vector, weight, when, born):
            detail = f"document {doc_id!r} not seen yet and the pending store is full"
            self.reject(DeadLetter("pending_overflow", detail, record), out)

    # --- clicks that waited in vain ---------------------------------------------------------------

    def expire(self, out) -> None:
        """Waiting clicks past their age become dead letters."""
        for doc_id, waiting in self.pending.expire(self.time.events, self.time.clock):
            self._dead_click("pending_expired", doc_id, waiting, out)

    def drain(self, out) -> None:
        """The clicks still waiting, as dead letters ("pending_at_end"); they wait no more."""
        for doc_id, waiting in self.pending.drain():
            self._dead_click("pending_at_end", doc_id, waiting, out)

    def _dead_click(self, reason: str, doc_id: str, click: Waiting, out) -> None:
        """A waiting click as a dead letter, written as the event it was (so that it can be sent
        again once its document exists)."""
        value = encode_event(click.query_id, click.vector, doc_id, click.weight, "train")
        detail = f"document {doc_id!r} did not arrive"
        self.reject(DeadLetter(reason, detail, Record("events", value)), out)
