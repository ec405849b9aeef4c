"""The ``stream-nudge`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Sequence

from stream_nudge import __version__

# Exit codes: 0 done, 1 the job failed, 2 a usage or configuration error (argparse's convention).
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

CONFIG_ENV = "STREAM_NUDGE_CONFIG"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_LEVEL_ENV = "STREAM_NUDGE_LOG_LEVEL"


def _log_level_arg(p: argparse.ArgumentParser, default) -> None:
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=default,
        help=f"logging level (env: {LOG_LEVEL_ENV}; default: the config's logging.level, WARNING)",
    )


def _log_level(args, config) -> str:
    """The flag (before or after the subcommand), else the environment, else the config."""
    if args.log_level is not None:
        return args.log_level
    return os.environ.get(LOG_LEVEL_ENV, "").upper() or config.logging.level.upper()


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
    _log_level_arg(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # --log-level also after the subcommand (where users put it); there it overrides the other.
    common = argparse.ArgumentParser(add_help=False)
    _log_level_arg(common, argparse.SUPPRESS)

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="run the engine on a synthetic stream and print the gain",
    )
    _config_arg(demo)

    replay = sub.add_parser(
        "replay",
        parents=[common],
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
        "--order",
        choices=["files", "time"],
        help="files: every document, then every event (default); time: both merged by their "
        '"ts" (config: replay.order)',
    )
    replay.add_argument(
        "--no-progress", action="store_true", help="no progress bar, even on a terminal"
    )
    _config_arg(replay)

    run = sub.add_parser(
        "run",
        parents=[common],
        help="the long-lived Kafka consumer: docs + events topics in, updates topic out",
        description="Consume documents and events from Kafka, publish changed embeddings. "
        "Environment: STREAM_NUDGE_KAFKA_BOOTSTRAP overrides kafka.bootstrap_servers; "
        "STREAM_NUDGE_KAFKA_SASL_USERNAME / _SASL_PASSWORD / _SSL_PASSWORD override the secrets.",
    )
    _config_arg(run)
    sink = sub.add_parser(
        "sink",
        parents=[common],
        help="the updates into a search backend: PostgreSQL + pgvector, or LanceDB",
        description="Read the updates topic (read_committed) or an updates JSONL file and write "
        "them into a search backend, exactly once: the backend stores the offsets it reflects "
        "with the rows and the sink resumes from there. A row only moves to a higher generation; "
        "deletions remove it. Environment: STREAM_NUDGE_SINK_TO overrides sink.to (a DSN with a "
        "password belongs there), STREAM_NUDGE_KAFKA_BOOTSTRAP kafka.bootstrap_servers.",
    )
    sink.add_argument(
        "--to",
        metavar="URL",
        help="postgresql://USER@HOST:PORT/DB[?table=NAME] or lancedb://PATH?table=NAME "
        "(default: sink.to)",
    )
    sink.add_argument(
        "--from",
        dest="source_file",
        metavar="UPDATES.jsonl",
        help="an updates file (as replay --out writes) instead of the updates topic; the sink "
        "stops at its end",
    )
    sink.add_argument(
        "--table", metavar="NAME", help="the table (default: sink.table, stream_nudge_embeddings)"
    )
    sink.add_argument(
        "--create",
        action="store_true",
        default=None,
        help="create what is missing: pgvector's extension, the table and its vector index "
        "(default: sink.create, false: refuse to start)",
    )
    sink.add_argument(
        "--dead-letter",
        metavar="FILE",
        help="with --from: where records that are not updates go "
        "(default: UPDATES.jsonl.sink-dead-letters.jsonl)",
    )
    _config_arg(sink)
    evaluate = sub.add_parser(
        "evaluate",
        parents=[common],
        help="measure retrieval gains on held-out test queries: tables, JSON, Markdown, plots",
        description="Compare no fine-tuning, batch NUDGE-M/N and the streaming engine on test "
        "queries (R@1, R@10, NDCG@10, MRR), with a learning curve. The test file is JSONL: "
        '{"query_id": ..., "query_embedding": [...], "relevant": {"doc-id": grade, ...}} '
        "(or query_embedding_b64; relevant may be a list of ids). "
        "--scenario shift generates a drifting stream instead of reading logs.",
    )
    evaluate.add_argument("--docs", metavar="DOCS.jsonl", help="documents, as for replay")
    evaluate.add_argument(
        "--events", metavar="EVENTS.jsonl", help="relevance events, as for replay"
    )
    evaluate.add_argument(
        "--test", metavar="TEST.jsonl", help="test queries and their relevant docs"
    )
    evaluate.add_argument(
        "--out",
        metavar="DIR",
        default="stream-nudge-evaluation",
        help="where results.json, results.md and learning-curve.png go "
        "(default: ./stream-nudge-evaluation)",
    )
    evaluate.add_argument(
        "--every",
        type=int,
        metavar="N",
        help="a learning-curve point every N events (default: 20 points)",
    )
    evaluate.add_argument(
        "--half-life-events",
        type=float,
        metavar="H",
        help="also run the streaming engine with decay.half_life_events = H, to compare",
    )
    evaluate.add_argument(
        "--scenario",
        choices=["shift"],
        help="instead of --docs/--events/--test: generate a stream whose queries move from one "
        "cluster to another (written to DIR/scenario) and compare decay (default H: 1000)",
    )
    evaluate.add_argument("--title", default="", help="a title for the report")
    _config_arg(evaluate)
    return parser


def _load(path):
    from stream_nudge.config import load_config

    return load_config(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _main(parser, args)
    except KeyboardInterrupt:
        # Ctrl-C: one line, not a traceback; 130 is the shell's code for SIGINT.
        note = " (its output is incomplete)" if args.command in ("replay", "evaluate") else ""
        print(f"\nstream-nudge {args.command}: interrupted{note}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from stream_nudge.config import ConfigError

    try:
        config = _load(args.config)
    except ConfigError as exc:
        print(f"stream-nudge {args.command}: bad configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    level = _log_level(args, config)
    if level not in LOG_LEVELS:
        print(
            f"stream-nudge {args.command}: {LOG_LEVEL_ENV}={level!r} is not one of "
            f"{', '.join(LOG_LEVELS)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from stream_nudge.observability import setup_logging

    setup_logging(level, config.logging.format)

    if args.command == "run":
        from stream_nudge.service import Service

        return Service(config).run()

    if args.command == "evaluate":
        return _evaluate(args, config)

    if args.command == "sink":
        return _sink(args, config)

    if args.command == "demo":
        from stream_nudge.demo import run_demo

        run_demo(config)
        return 0

    from stream_nudge.app import replay

    if _missing_file("replay", args, ("docs", "events")):
        return EXIT_USAGE
    dead_letter = args.dead_letter or args.out + ".dead-letters.jsonl"
    if _no_folder("replay", {"--out": args.out, "--dead-letter": dead_letter}):
        return EXIT_USAGE
    if _clobbers(
        "replay",
        {"--out": args.out, "--dead-letter": dead_letter},
        {"--docs": args.docs, "--events": args.events},
    ):
        return EXIT_USAGE
    if args.order is not None:
        config = dataclasses.replace(
            config, replay=dataclasses.replace(config.replay, order=args.order)
        )
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
    return _judge_input("replay", summary, config.replay.warn_rejected_fraction, dead_letter)


def _sink(args, config) -> int:
    from stream_nudge.backends.sink import SinkService

    changes = {
        key: value
        for key, value in (("to", args.to), ("table", args.table), ("create", args.create))
        if value is not None
    }
    if changes:
        config = dataclasses.replace(config, sink=dataclasses.replace(config.sink, **changes))
    if args.source_file is not None and not os.path.isfile(args.source_file):
        print(f"stream-nudge sink: --from: no such file: {args.source_file}", file=sys.stderr)
        return EXIT_USAGE
    return SinkService(config, args.source_file, args.dead_letter).run()


def _judge_input(command: str, summary, warn_fraction: float, dead_letter: str) -> int:
    """Exit 1 when no input line was valid; warn on stderr when most were rejected."""
    if summary.rejected and not summary.valid:
        print(
            f"stream-nudge {command}: no valid input: all {summary.rejected} lines were rejected "
            f"(see {dead_letter}); are --docs and --events swapped, or not JSONL?",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if summary.rejected_fraction() > warn_fraction:
        print(
            f"stream-nudge {command}: warning: {summary.rejected_fraction():.0%} of the input was "
            f"rejected ({summary.rejected} of {summary.valid + summary.rejected} lines; reasons "
            f"in {dead_letter})",
            file=sys.stderr,
        )
    return 0


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one file: the same inode where both exist (hard links too), else
    the same path once symbolic links are resolved."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _clobbers(command: str, outputs: dict[str, str], inputs: dict[str, str]) -> bool:
    """Say so (and return True) if an output would overwrite an input or another output: opening
    it for writing would empty the file before a line of it was read."""
    seen = dict(inputs)
    for flag, path in outputs.items():
        for other, other_path in seen.items():
            if _same_file(path, other_path):
                print(
                    f"stream-nudge {command}: {flag} {path} is the same file as {other} "
                    f"{other_path}; writing it would destroy it",
                    file=sys.stderr,
                )
                return True
        seen[flag] = path
    return False


def _missing_file(command: str, args, names) -> bool:
    """Say so (and return True) if one of the files named by these options does not exist."""
    for name in names:
        path = getattr(args, name)
        if os.path.isdir(path):
            print(
                f"stream-nudge {command}: --{name}: {path} is a directory, not a file",
                file=sys.stderr,
            )
            return True
        if not os.path.isfile(path):
            print(f"stream-nudge {command}: --{name}: no such file: {path}", file=sys.stderr)
            return True
    return False


def _no_folder(command: str, outputs: dict[str, str]) -> bool:
    """Say so (and return True) if an output's folder does not exist (before any work)."""
    for flag, path in outputs.items():
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            print(
                f"stream-nudge {command}: {flag}: the folder {folder} does not exist",
                file=sys.stderr,
            )
            return True
    return False


def _evaluate(args, config) -> int:
    from stream_nudge.evaluate import EvaluationError, evaluate, write_report

    half_life = args.half_life_events
    if args.every is not None and args.every < 1:
        print("stream-nudge evaluate: --every must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    if half_life is not None and not (half_life > 0 and math.isfinite(half_life)):
        print(
            "stream-nudge evaluate: --half-life-events must be a positive number", file=sys.stderr
        )
        return EXIT_USAGE
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        print(
            f"stream-nudge evaluate: --out {args.out} exists and is not a directory",
            file=sys.stderr,
        )
        return EXIT_USAGE
    written = {
        f"--out {name}": os.path.join(args.out, name)
        for name in ("results.json", "results.md", "learning-curve.png")
    }
    inputs = {f"--{n}": getattr(args, n) for n in ("docs", "events", "test") if getattr(args, n)}
    if _clobbers("evaluate", written, inputs):
        return EXIT_USAGE
    given = [f"--{n}" for n in ("docs", "events", "test") if getattr(args, n) is not None]
    if args.scenario is not None and given:
        print(
            f"stream-nudge evaluate: --scenario makes its own data; drop {', '.join(given)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.scenario == "shift":
        from stream_nudge.scenarios import shift_scenario

        paths = shift_scenario(os.path.join(args.out, "scenario"))
        docs, events, test = paths["docs"], paths["events"], paths["test"]
        config = paths["config"](config)
        if half_life is None:
            half_life = 1000.0
    else:
        missing = [f"--{n}" for n in ("docs", "events", "test") if getattr(args, n) is None]
        if missing:
            print(
                f"stream-nudge evaluate: needs {', '.join(missing)} (or --scenario)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        if _missing_file("evaluate", args, ("docs", "events", "test")):
            return EXIT_USAGE
        docs, events, test = args.docs, args.events, args.test
    try:
        report = evaluate(
            config,
            docs,
            events,
            test,
            every=args.every,
            decay_half_life_events=half_life,
            progress=lambda message: print(f"... {message}", file=sys.stderr),
        )
    except EvaluationError as exc:
        print(f"stream-nudge evaluate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    written = write_report(report, args.out, args.title)
    for line in report.table():
        print(line)
    for sentence in report.dropped():
        print(sentence, file=sys.stderr)
    print(f"wrote {', '.join(str(p) for p in written)} ({report.seconds:.1f} s)")
    return 0
