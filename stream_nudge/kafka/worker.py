"""Kafka clients in their own processes, so that kafka-python's per-record work runs beside the engine.

kafka-python is pure Python: parsing fetched records and building produced ones costs tens of
microseconds per record under the one GIL the engine also needs. The service therefore runs its
consumer and its producer each in a child process (a fresh interpreter: the parent has threads, so
forking it is unsafe), talking to the parent over a socket pair with multiprocessing's framing.

A child must never outlive the service: a producer left behind could write an older generation of
a document after a restart. So a child asks the kernel to kill it when its parent dies
(``PR_SET_PDEATHSIG``; strictly, when the parent *thread* that started it ends, so start workers
from a thread that lives as long as they do, as the service's main thread does), ignores SIGINT and
SIGTERM (a Ctrl-C reaches the whole process group, but the parent decides when the child stops:
after its final checkpoint), and exits when the socket to its parent closes.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

__all__ = ["ChildGone", "Worker", "child_setup"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


class ChildGone(ConnectionError):
    """The child process stopped answering (it crashed, or was killed)."""


@dataclass(frozen=True)
class _Gone:
    """What the reader thread leaves in the inbox when the child's end of the socket closes."""

    reason: str


def child_setup(parent_pid: int, setup: tuple[str, str, str]) -> None:
    """Run first in every child: die with the parent, leave signals to it, log as it does.

    ``setup`` is (process name, logging level, logging format); the name (at most 15 bytes) is
    what ``ps -o comm`` and ``/proc/PID/comm`` show.
    """
    name, *logs = setup
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the closed pipe still ends the child
        pass
    if os.getppid() != parent_pid:  # the parent died before the request above took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from stream_nudge.observability import setup_logging

    setup_logging(*logs)


class Worker:
    """A child process running ``target(connection, parent_pid, setup, *args)`` and the pipe to it.

    ``name`` names the process (for ``ps``); ``logs`` is the service's logging level and format, for
    the child to log the same way; ``setup`` hands both to :func:`child_setup`. The child is a fresh
    interpreter (``python -m stream_nudge.kafka.child FD``) that receives the target and its
    arguments over the pipe: unlike multiprocessing's ``spawn``, it never imports the parent's main
    module, so any program may make a KafkaSource or KafkaSink, guarded by ``__main__`` or not.
    """

    def __init__(self, target: Callable, args: tuple, name: str, logs: tuple[str, str]):
        ours, theirs = socket.socketpair()
        # The child imports this very stream_nudge, installed or not.
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "stream_nudge.kafka.child", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env=env,
                stdin=subprocess.DEVNULL,
            )
        self._socket = ours
        self.connection = Connection(os.dup(ours.fileno()))
        self.name = name
        # A thread takes the child's messages off the socket as they come (recv releases the GIL
        # while it waits), so that a child sending a large batch never waits for the engine to
        # finish its current one: the socket buffer holds far less than a batch.
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, name=f"{name} reader", daemon=True)
        self._reader.start()
        self.send((target.__module__, target.__name__, os.getpid(), (name, *logs), args))

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, message) -> None:
        try:
            self.connection.send(message)
        except (OSError, ValueError) as exc:
            raise ChildGone(f"{self.name} is gone ({exc})") from exc

    def _read(self) -> None:
        while True:
            try:
                message = self.connection.recv()
            except (EOFError, OSError) as exc:
                self._inbox.put(_Gone(repr(exc)))
                return
            self._inbox.put(message)

    def receive(self, timeout: float | None = None):
        """The child's next message; ChildGone if it died or sent nothing within ``timeout``."""
        try:
            message = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise ChildGone(f"{self.name} did not answer within {timeout} s") from None
        if isinstance(message, _Gone):
            self._inbox.put(message)  # for any later call too
            raise ChildGone(f"{self.name} is gone ({message.reason})")
        return message

    def stop(self, timeout: float = 15.0) -> None:
        """Close the pipe (the child then exits) and wait; kill it if it does not."""
        # Shut the socket down first: that wakes the reader thread (a bare close would not).
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._reader.join(timeout)
        self.connection.close()
        self._socket.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not exit within %.0f s: killing it", self.name, timeout)
            self.process.kill()
            self.process.wait(5)


def receive_command(connection: Connection):
    """In a child: the parent's next command, or None when the parent is gone."""
    try:
        return connection.recv()
    except (EOFError, OSError):
        return None


def tell(connection: Connection, message) -> None:
    """In a child: send to the parent, unless it is gone (then it no longer needs to know)."""
    with contextlib.suppress(OSError):
        connection.send(message)


def read_ahead(connection: Connection, depth: int = 2) -> queue.Queue:
    """In a child: a queue of the parent's commands (None last, when the parent is gone), filled by
    a thread, so that the parent's next large send is taken off the socket while the child still
    works on the previous one. At most ``depth`` wait: beyond that the parent's sends block, which
    bounds the memory when the child is the slower side."""
    inbox: queue.Queue = queue.Queue(maxsize=depth)

    def read() -> None:
        while True:
            command = receive_command(connection)
            inbox.put(command)
            if command is None:
                return

    threading.Thread(target=read, name="commands", daemon=True).start()
    return inbox
