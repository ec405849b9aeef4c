"""The numpy-only NUDGE core: closed forms, exact gamma selection, objectives. No I/O."""

from stream_nudge.core.finetune import FineTuneResult, ValidationReport, fine_tune
from stream_nudge.core.geometry import nudge_m, nudge_n, rotation, unit_rows
from stream_nudge.core.objectives import Objective, parse_objective
from stream_nudge.core.selection import Selection, ValidationScores, objective_at, select_gamma

__all__ = [
    "FineTuneResult",
    "Objective",
    "Selection",
    "ValidationReport",
    "ValidationScores",
    "fine_tune",
    "nudge_m",
    "nudge_n",
    "objective_at",
    "parse_objective",
    "rotation",
    "select_gamma",
    "unit_rows",
]
