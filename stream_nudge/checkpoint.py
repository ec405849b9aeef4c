"""Checkpoints: the engine's state and the input positions it reflects, written as one unit.

One file, ``checkpoint.npz`` in the checkpoint directory: the state's arrays plus a JSON header
(format version, metadata, the next offset of every input partition, a BLAKE2b checksum over all of
it). It is written to a temporary file, fsynced, and renamed over the old one, so a crash at any
moment leaves either the old or the new checkpoint, whole. The previous one is kept as
``checkpoint.prev.npz`` (a hard link made before the rename, so there is never a moment without a
current checkpoint).

The checkpoint is the one source of truth for input positions: on start the service seeks to the
offsets in it and ignores what the consumer group has committed (that is kept up to date only so
that lag shows in the usual tools).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "StateDirectoryError",
]

FORMAT_VERSION = 1
_HEADER = "__header__"

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted (unreadable, wrong version, checksum mismatch)."""


class StateDirectoryError(RuntimeError):
    """The state directory cannot be used: not writable, or another instance holds it. Not a
    Kafka problem: retrying cannot help, so the service stops and says why."""


@dataclass
class Checkpoint:
    arrays: dict[str, np.ndarray]
    meta: dict
    offsets: dict
    created: float
    path: Path


def _checksum(arrays: dict[str, np.ndarray], body: bytes) -> str:
    h = hashlib.blake2b(digest_size=32)
    h.update(body)
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
    return h.hexdigest()


class CheckpointStore:
    """Writes and reads checkpoints in one directory."""

    def __init__(
        self, directory: str | os.PathLike, keep_previous: bool = True, fallback: bool = False
    ):
        self.directory = Path(directory)
        self.keep_previous = keep_previous
        self.fallback = fallback
        self.path = self.directory / "checkpoint.npz"
        self.previous = self.directory / "checkpoint.prev.npz"

    def claim(self) -> None:
        """Make sure the directory can hold checkpoints, and hold it: create it, write and remove
        a probe file, and take an exclusive lock on ``lock`` (released when the process ends,
        however it ends), so that two instances never share one state directory.

        Raises :class:`StateDirectoryError` naming the directory and the reason.
        """
        where = self.directory.resolve()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StateDirectoryError(
                f"checkpoint.directory {where} is not writable ({exc.strerror or exc}); "
                "point checkpoint.directory (or STREAM_NUDGE_STATE_DIR) at a writable directory"
            ) from exc
        # Held open for the life of the process: the lock lives as long as the file is open.
        lock = (self.directory / "lock").open("a+")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise StateDirectoryError(
                f"checkpoint.directory {where} is in use by another stream-nudge (pid {holder}); "
                "give each instance a state directory of its own"
            ) from exc
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock

    def release(self) -> None:
        """Give up the directory's lock (it also goes when the process ends)."""
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.close()
            self._lock = None

    def save(self, arrays: dict[str, np.ndarray], meta: dict, offsets: dict) -> Checkpoint:
        """Write a checkpoint atomically. An I/O failure raises :class:`StateDirectoryError`."""
        try:
            return self._save(arrays, meta, offsets)
        except OSError as exc:
            raise StateDirectoryError(
                f"cannot write a checkpoint in {self.directory.resolve()}: {exc}"
            ) from exc

    def _save(self, arrays: dict[str, np.ndarray], meta: dict, offsets: dict) -> Checkpoint:
        self.directory.mkdir(parents=True, exist_ok=True)
        created = time.time()
        body = json.dumps(
            {"format": FORMAT_VERSION, "meta": meta, "offsets": offsets, "created": created},
            sort_keys=True,
        ).encode()
        header = json.dumps({"body": body.decode(), "checksum": _checksum(arrays, body)}).encode()
        tmp = self.directory / f".checkpoint.{os.getpid()}.tmp"
        with tmp.open("wb") as f:
            np.savez(f, **arrays, **{_HEADER: np.frombuffer(header, dtype=np.uint8)})
            f.flush()
            os.fsync(f.fileno())
        if self.keep_previous and self.path.exists():
            link = self.directory / f".checkpoint.prev.{os.getpid()}.tmp"
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            os.link(self.path, link)
            os.replace(link, self.previous)
        os.replace(tmp, self.path)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return Checkpoint(arrays, meta, offsets, created, self.path)

    def load(self) -> Checkpoint | None:
        """The current checkpoint; None if there is none. Raises CheckpointError if it is bad.

        With ``fallback``, a bad current checkpoint is replaced by the previous one (if good).
        """
        if not self.path.exists():
            if self.previous.exists():
                # A crash between the two renames of an older version: the previous one is whole.
                return self._read(self.previous)
            return None
        try:
            return self._read(self.path)
        except CheckpointError as exc:
            if self.fallback and self.previous.exists():
                log.warning("%s; falling back to the previous checkpoint %s", exc, self.previous)
                return self._read(self.previous)
            raise

    def _read(self, path: Path) -> Checkpoint:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except Exception as exc:  # zip, CRC, numpy format: all mean the same here
            raise CheckpointError(
                f"checkpoint {path} is unreadable ({exc.__class__.__name__}: {exc})"
            ) from exc
        header_bytes = arrays.pop(_HEADER, None)
        if header_bytes is None:
            raise CheckpointError(f"checkpoint {path} has no header")
        try:
            header = json.loads(header_bytes.tobytes())
            body = header["body"].encode()
            content = json.loads(body)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path} has a damaged header ({exc})") from exc
        if content.get("format") != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint {path} has format {content.get('format')!r}; this version reads {FORMAT_VERSION}"
            )
        if _checksum(arrays, body) != header.get("checksum"):
            raise CheckpointError(f"checkpoint {path} fails its checksum")
        return Checkpoint(arrays, content["meta"], content["offsets"], content["created"], path)
