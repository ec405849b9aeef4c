"""stream-nudge: NUDGE fine-tuning of document embeddings, online, from a stream of clicks."""

__version__ = "0.1.0"

from stream_nudge.core import FineTuneResult, fine_tune

__all__ = ["FineTuneResult", "__version__", "fine_tune"]
