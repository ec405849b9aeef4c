"""``python -m stream_nudge`` is the ``stream-nudge`` command."""

from stream_nudge.cli import main

raise SystemExit(main())
