"""Crash points, for the crash tests: ``STREAM_NUDGE_CRASH_AT=<point>:<n>`` makes the process
kill itself (SIGKILL: nothing is flushed, closed or committed) the n-th time it reaches
``<point>``. The exactly-once tests use it to kill the service at each step of a commit and
during a restore, where a kill from outside would land only by chance.

The points: ``commit:changelog`` (the batch's updates are in the open transaction, the changelog
records are not), ``commit:offsets`` (everything is in the transaction, it is not committed),
``commit:committed`` (committed, the next transaction not begun) and ``restore`` (the changelog
is read, the member has not started consuming); for ``stream-nudge sink``: ``sink:dead_letters``,
``sink:write`` (a batch is about to go out), ``sink:written``, ``postgres:commit`` (the batch is in
the open database transaction), ``lancedb:rows`` (the rows are committed, the deletion marks and
offsets are not) and ``lancedb:marks``. Unset (always, outside the tests) a point costs
a comparison.

``STREAM_NUDGE_STALL_AT=<point>:<n>:<seconds>`` makes it sleep there instead (logged first), so
that a test can make something happen at that moment (a rebalance while a commit is under way).
"""

from __future__ import annotations

import logging
import os
import signal
import time

__all__ = ["crash_point"]

log = logging.getLogger(__name__)


def _target() -> tuple[str, int] | None:
    value = os.environ.get("STREAM_NUDGE_CRASH_AT", "")
    point, _, count = value.rpartition(":")
    if not point or not count.isdigit():
        return None
    return point, int(count)


def _stall() -> tuple[str, int, float] | None:
    value = os.environ.get("STREAM_NUDGE_STALL_AT", "")
    rest, _, seconds = value.rpartition(":")
    point, _, count = rest.rpartition(":")
    try:
        return (point, int(count), float(seconds)) if point else None
    except ValueError:
        return None


_TARGET = _target()
_STALL = _stall()
_seen: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Kill this process here if ``STREAM_NUDGE_CRASH_AT`` names this point and this visit."""
    if _STALL is not None and _STALL[0] == name:
        _seen[name] = _seen.get(name, 0) + 1
        if _seen[name] == _STALL[1]:
            log.warning("stalling at %s for %.1f s (STREAM_NUDGE_STALL_AT)", name, _STALL[2])
            time.sleep(_STALL[2])
        return
    if _TARGET is None or _TARGET[0] != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == _TARGET[1]:
        os.kill(os.getpid(), signal.SIGKILL)
