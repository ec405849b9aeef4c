"""Crash points, for the crash tests: ``STREAM_NUDGE_CRASH_AT=<point>:<n>`` makes the process
kill itself (SIGKILL: nothing is flushed, closed or committed) the n-th time it reaches
``<point>``. The exactly-once tests use it to kill the service at each step of a commit and
during a restore, where a kill from outside would land only by chance.

The points: ``commit:changelog`` (the batch's updates are in the open transaction, the changelog
records are not), ``commit:offsets`` (everything is in the transaction, it is not committed),
``commit:committed`` (committed, the next transaction not begun) and ``restore`` (the changelog
is read, the member has not started consuming). Unset (always, outside the tests) a point costs
a comparison.
"""

from __future__ import annotations

import os
import signal

__all__ = ["crash_point"]


def _target() -> tuple[str, int] | None:
    value = os.environ.get("STREAM_NUDGE_CRASH_AT", "")
    point, _, count = value.rpartition(":")
    if not point or not count.isdigit():
        return None
    return point, int(count)


_TARGET = _target()
_seen: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Kill this process here if ``STREAM_NUDGE_CRASH_AT`` names this point and this visit."""
    if _TARGET is None or _TARGET[0] != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == _TARGET[1]:
        os.kill(os.getpid(), signal.SIGKILL)
