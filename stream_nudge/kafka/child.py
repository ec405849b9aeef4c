"""``python -m stream_nudge.kafka.child FD``: the entry point of a :class:`~stream_nudge.kafka.worker.Worker`.

It reads, from the socket it inherited as ``FD``, which function to run and with what, and runs it.
(A module of its own, that nothing imports, so that running it as ``__main__`` never duplicates a
module the package has already imported.)
"""

from __future__ import annotations

import importlib
import sys
from multiprocessing.connection import Connection

from stream_nudge.kafka.worker import receive_command


def main(fd: int) -> None:
    connection = Connection(fd)
    command = receive_command(connection)
    if command is None:  # the parent is already gone
        return
    module, name, parent_pid, setup, args = command
    target = getattr(importlib.import_module(module), name)
    target(connection, parent_pid, setup, *args)


if __name__ == "__main__":
    main(int(sys.argv[1]))
