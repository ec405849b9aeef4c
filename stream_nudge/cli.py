"""The ``stream-nudge`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from stream_nudge import __version__

# Exit codes: 0 done, 1 the job failed, 2 a usage or configuration error (argparse's convention).
EXIT_FAILED = 1
EXIT_USAGE = 2

CONFIG_ENV = "STREAM_NUDGE_CONFIG"


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        default=os.environ.get(CONFIG_ENV),
        help=f"YAML configuration (env: {CONFIG_ENV}; default: built-in defaults)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-nudge",
        description="Online NUDGE fine-tuning of document embeddings from a stream of clicks.",
    )
    parser.add_argument("--version", action="version", version=f"stream-nudge {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("STREAM_NUDGE_LOG_LEVEL", "WARNING"),
        help="logging level (env: STREAM_NUDGE_LOG_LEVEL; default WARNING)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the engine on a synthetic stream and print the gain")
    _config_arg(demo)

    replay = sub.add_parser(
        "replay",
        help="run the engine over JSONL logs: documents, then events, then a final selection",
    )
    replay.add_argument(
        "--docs", required=True, metavar="DOCS.jsonl", help="documents, one JSON per line"
    )
    replay.add_argument(
        "--events",
        required=True,
        metavar="EVENTS.jsonl",
        help="relevance events, one JSON per line",
    )
    replay.add_argument(
        "--out", required=True, metavar="UPDATES.jsonl", help="where updates are written"
    )
    replay.add_argument(
        "--dead-letter",
        metavar="FILE",
        help="where bad input goes, with the reason (default: UPDATES.jsonl.dead-letters.jsonl)",
    )
    replay.add_argument(
        "--no-progress", action="store_true", help="no progress bar, even on a terminal"
    )
    _config_arg(replay)

    run = sub.add_parser(
        "run",
        help="the long-lived Kafka consumer: docs + events topics in, updates topic out",
        description="Consume documents and events from Kafka, publish changed embeddings. "
        "Environment: STREAM_NUDGE_KAFKA_BOOTSTRAP overrides kafka.bootstrap_servers; "
        "STREAM_NUDGE_KAFKA_SASL_USERNAME / _SASL_PASSWORD / _SSL_PASSWORD override the secrets.",
    )
    _config_arg(run)
    sub.add_parser("evaluate", help="measure retrieval gains on held-out queries (not built yet)")
    return parser


def _load(path):
    from stream_nudge.config import load_config

    return load_config(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "evaluate":
        print(
            f"stream-nudge {args.command}: not built yet in this version ({__version__})",
            file=sys.stderr,
        )
        return EXIT_USAGE

    from stream_nudge.config import ConfigError

    try:
        config = _load(args.config)
    except ConfigError as exc:
        print(f"stream-nudge {args.command}: bad configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE

    if args.command == "run":
        from stream_nudge.observability import setup_logging
        from stream_nudge.service import Service

        setup_logging(config.logging.level, config.logging.format)
        return Service(config).run()

    if args.command == "demo":
        from stream_nudge.demo import run_demo

        run_demo(config)
        return 0

    from stream_nudge.app import replay

    for name in ("docs", "events"):
        path = getattr(args, name)
        if not os.path.isfile(path):
            print(f"stream-nudge replay: --{name}: no such file: {path}", file=sys.stderr)
            return EXIT_USAGE
    try:
        summary = replay(
            config,
            args.docs,
            args.events,
            args.out,
            args.dead_letter,
            progress=not args.no_progress,
        )
    except OSError as exc:
        print(f"stream-nudge replay: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for line in summary.lines():
        print(line)
    return 0
