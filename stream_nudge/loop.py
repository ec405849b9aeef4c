"""The run loop: a source, the engine, a sink and a committer. Every command runs this one.

``run`` polls the source for a batch, hands it to the engine and the engine's changes to the sink,
and asks the committer whether a commit is due; only the source, the sink and the committer
differ between a replay (JSONL files, no commits), the demo and ``evaluate`` (memory), the
benchmarks, and the Kafka service (checkpoints or transactions). What ends a run is decided
here, once:

- **the end of the input** (the source returns None): the engine's final selection, then the
  clicks still waiting for their document as dead letters if asked (``Ending``), then a commit;
- **a stop request** (SIGTERM, Ctrl-C, a benchmark's target; ``stop()`` turns true): the batch in
  hand is finished and committed, nothing more is read;
- **idle** (a live source caught up, no input for ``idle_select_seconds``): gamma is re-selected
  on the events since the last selection, as the end of the input would, and the run goes on.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from stream_nudge.engine import Engine
from stream_nudge.messages import Record
from stream_nudge.sinks import Sink
from stream_nudge.sources import Source

__all__ = ["Committer", "Ending", "Outcome", "run"]


class Committer(Protocol):
    def due(self, now: float) -> bool:
        """Whether a commit is due at monotonic time ``now``."""

    def commit(self) -> None:
        """Make everything processed so far durable, with the input position it reflects."""


class Outcome(enum.Enum):
    ENDED = "ended"  # the input ended
    STOPPED = "stopped"  # stop() turned true


@dataclass(frozen=True)
class Ending:
    """What the end of the input calls for."""

    select: bool = True  # a final selection of gamma, and the updates it calls for
    drain_pending: bool = False  # clicks still waiting for their document become dead letters


def run(
    engine: Engine,
    source: Source,
    sink: Sink,
    batch_size: int,
    *,
    committer: Committer | None = None,
    stop: Callable[[], bool] = lambda: False,
    ending: Ending = Ending(),
    idle_select_seconds: float | None = None,
    on_batch: Callable[[list[Record]], None] | None = None,
) -> Outcome:
    """Run until the input ends or ``stop()``; see the module docstring.

    ``on_batch`` sees every batch polled (also empty ones: a live source's heartbeat), after the
    engine's changes went to the sink.
    """
    last_input = time.monotonic()
    while not stop():
        batch = source.next_batch(batch_size)
        if batch is None:
            if ending.select:
                sink.write(engine.finish())
            if ending.drain_pending:
                sink.write(engine.drain_pending())
            if committer is not None:
                committer.commit()
            return Outcome.ENDED
        now = time.monotonic()
        if batch:
            last_input = now
            sink.write(engine.process(batch))
        elif (
            idle_select_seconds is not None
            and engine.events_since_selection > 0
            and now - last_input >= idle_select_seconds
            and source.caught_up()
        ):
            # Caught up and idle: the live counterpart of the final selection at the end.
            sink.write(engine.reselect())
        if on_batch is not None:
            on_batch(batch)
        if committer is not None and committer.due(now):
            committer.commit()
    if committer is not None:
        committer.commit()
    return Outcome.STOPPED
