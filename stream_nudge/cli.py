"""The ``stream-nudge`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stream_nudge import __version__

# Exit codes: 0 done, 1 the job failed, 2 a usage or configuration error (argparse's convention).
EXIT_USAGE = 2


def _not_built(name: str) -> int:
    print(f"stream-nudge {name}: not built yet in this version ({__version__})", file=sys.stderr)
    return EXIT_USAGE


def _demo(args: argparse.Namespace) -> int:
    print(
        "stream-nudge demo: will generate a synthetic domain-shifted stream of documents and clicks,\n"
        "replay it through the streaming engine and print hit@1 and NDCG@10 before and after.\n"
        "The engine is not built yet in this version."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-nudge",
        description="Online NUDGE fine-tuning of document embeddings from a stream of clicks.",
    )
    parser.add_argument("--version", action="version", version=f"stream-nudge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("demo", help="run the engine on a synthetic stream and print the gain")
    sub.add_parser("run", help="the long-lived Kafka consumer (not built yet)")
    sub.add_parser("replay", help="run the engine over JSONL logs (not built yet)")
    sub.add_parser("evaluate", help="measure retrieval gains on held-out queries (not built yet)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "demo":
        return _demo(args)
    return _not_built(args.command)
