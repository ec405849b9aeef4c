"""The streaming engine: per-document state, the validation window, and the engine that runs them."""

from stream_nudge.engine.engine import Changes, Engine, SelectionReport, restore, snapshot
from stream_nudge.engine.state import DocumentTable
from stream_nudge.engine.window import ValidationWindow

__all__ = [
    "Changes",
    "DocumentTable",
    "Engine",
    "SelectionReport",
    "ValidationWindow",
    "restore",
    "snapshot",
]
