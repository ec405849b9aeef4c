"""stream-nudge: NUDGE fine-tuning of document embeddings, online, from a stream of clicks."""

__version__ = "0.1.0"

__all__ = ["__version__"]
