"""The command line: version, help, and honest exit codes."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from stream_nudge import __version__
from stream_nudge.cli import main


def test_version_is_printed_by_the_installed_console_script():
    out = subprocess.run(
        [sys.executable, "-m", "stream_nudge", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"stream-nudge {__version__}"


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for command in ("demo", "run", "replay", "evaluate"):
        assert command in text


def test_no_subcommand_is_a_usage_error(capsys):
    assert main([]) == 2


@pytest.mark.parametrize(
    "args",
    [
        ["replay", "--docs", "nowhere.jsonl", "--events", "nowhere.jsonl", "--out", "u.jsonl"],
        ["evaluate", "--docs", "nowhere.jsonl", "--events", "e", "--test", "t", "--out", "o"],
    ],
)
def test_a_missing_input_file_is_a_usage_error_naming_the_option(args, capsys, tmp_path):
    assert main([a if a != "o" else str(tmp_path / "o") for a in args]) == 2
    assert "--docs: no such file: nowhere.jsonl" in capsys.readouterr().err


def _logs(tmp_path):
    from streams import doc_message, event_message, write_jsonl

    docs = write_jsonl(tmp_path / "docs.jsonl", [doc_message(f"d{i}", [1.0, i]) for i in range(3)])
    events = write_jsonl(tmp_path / "events.jsonl", [event_message("q", [1.0, 2.0], "d1", "train")])
    return docs, events


@pytest.mark.parametrize("target", ["docs", "events", "docs-link", "events-hardlink"])
@pytest.mark.parametrize("flag", ["--out", "--dead-letter"])
def test_replay_refuses_to_write_over_an_input_before_opening_anything(
    tmp_path, capsys, flag, target
):
    import os

    docs, events = _logs(tmp_path)
    before = {p: p.read_bytes() for p in (docs, events)}
    path = {"docs": docs, "events": events}[target.split("-")[0]]
    if target.endswith("-link"):
        (tmp_path / "link.jsonl").symlink_to(path)
        path = tmp_path / "link.jsonl"
    elif target.endswith("-hardlink"):
        os.link(path, tmp_path / "hard.jsonl")
        path = tmp_path / "hard.jsonl"
    args = ["replay", "--docs", str(docs), "--events", str(events), "--out", str(tmp_path / "u")]
    args += [flag, str(path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{flag} {path} is the same file as --{target.split('-')[0]}" in err
    assert {p: p.read_bytes() for p in (docs, events)} == before  # untouched
    assert not (tmp_path / "u").exists()


def test_replay_refuses_one_file_for_updates_and_dead_letters(tmp_path, capsys):
    docs, events = _logs(tmp_path)
    out = str(tmp_path / "u.jsonl")
    args = ["replay", "--docs", str(docs), "--events", str(events), "--out", out]
    assert main([*args, "--dead-letter", out]) == 2
    assert "--dead-letter" in capsys.readouterr().err
    assert main(args) == 0  # the default dead-letter file is beside --out


def test_evaluate_refuses_an_out_that_is_a_file_before_any_work(tmp_path, capsys):
    docs, events = _logs(tmp_path)
    out = tmp_path / "report"
    out.write_text("mine")
    args = ["evaluate", "--docs", str(docs), "--events", str(events), "--test", str(events)]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"stream-nudge evaluate: --out {out} exists and is not a directory"
    assert out.read_text() == "mine"
    # An input inside --out under a name evaluate writes is refused too.
    out.unlink()
    out.mkdir()
    (out / "results.json").write_bytes(events.read_bytes())
    assert main([*args[:-1], str(out / "results.json"), "--out", str(out)]) == 2
    assert "--out results.json" in capsys.readouterr().err


def test_ctrl_c_during_replay_is_one_line_and_exit_130(tmp_path):
    import signal
    import time

    from streams import write_jsonl

    # Enough documents that the replay is still reading when the signal comes (one vector, many ids).
    vector = b",".join(b"%.6f" % (0.01 * (i + 1)) for i in range(64))
    line = b'{"op":"upsert","id":"d%d","embedding":[' + vector + b"]}\n"
    docs = tmp_path / "docs.jsonl"
    docs.write_bytes(b"".join(line % i for i in range(300_000)))
    events = write_jsonl(tmp_path / "events.jsonl", [])
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stream_nudge",
            "replay",
            "--docs",
            str(docs),
            "--events",
            str(events),
            "--out",
            str(tmp_path / "u.jsonl"),
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out = tmp_path / "u.jsonl"
    deadline = time.monotonic() + 30
    while not out.exists() and time.monotonic() < deadline:  # the replay has started
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == "stream-nudge replay: interrupted (its output is incomplete)"


def test_a_replay_that_rejects_every_line_fails_and_one_that_rejects_most_warns(tmp_path, capsys):
    docs, events = _logs(tmp_path)
    out = str(tmp_path / "u.jsonl")
    # Swapped: every document line is an event and the other way round.
    swapped = ["replay", "--docs", str(events), "--events", str(docs), "--out", out]
    assert main(swapped) == 1
    err = capsys.readouterr().err
    assert "no valid input: all 4 lines were rejected" in err and "swapped" in err
    # Mostly rejected: a warning, exit 0.
    noisy = tmp_path / "noisy.jsonl"
    noisy.write_bytes(events.read_bytes() + b"a,b,c\n" * 5)
    assert main(["replay", "--docs", str(docs), "--events", str(noisy), "--out", out]) == 0
    captured = capsys.readouterr()
    assert "warning: 56% of the input was rejected (5 of 9 lines" in captured.err
    assert "dead letters    5" in captured.out
    # Re-deliveries are valid input, reported as such, and never dead letters.
    twice = tmp_path / "twice.jsonl"
    twice.write_bytes(events.read_bytes() * 3)
    assert main(["replay", "--docs", str(docs), "--events", str(twice), "--out", out]) == 0
    captured = capsys.readouterr()
    assert "re-delivered    2 pairs ignored" in captured.out and captured.err == ""


@pytest.mark.parametrize("order", ["files", "time"])
def test_replay_in_time_order_applies_clicks_before_the_delete_that_follows_them(tmp_path, order):
    from streams import event_message

    from stream_nudge.app import replay
    from stream_nudge.config import load_config

    lines = [
        b'{"op": "upsert", "id": "d1", "embedding": [1.0, 0.0], "ts": 0}',
        b'{"op": "upsert", "id": "d2", "embedding": [0.0, 1.0], "ts": 0}',
        b'{"op": "delete", "id": "d1", "ts": 10}',
        b'{"op": "upsert", "id": "d1", "embedding": [0.7, 0.7], "ts": 20}',
    ]
    docs = tmp_path / "d.jsonl"
    docs.write_bytes(b"\n".join(lines) + b"\n")
    events = tmp_path / "e.jsonl"
    clicks = [event_message(f"q{i}", [0.0, 1.0], "d1", "train", ts=5.0 + i) for i in range(3)]
    events.write_bytes(b"\n".join(clicks) + b"\n")
    config = load_config(overrides={"replay": {"order": order}, "gamma": {"every_events": 0}})
    engine_summary = replay(config, docs, events, tmp_path / "u.jsonl", progress=False)
    assert engine_summary.documents == 2
    # In file order the delete comes first: the clicks meant for the old d1 move the new one.
    assert engine_summary.nudged == (1 if order == "files" else 0)


def test_log_level_before_or_after_the_subcommand_and_from_the_config(tmp_path, capsys):
    from streams import event_message

    docs, events = _logs(tmp_path)
    # A validation query, so that a selection runs and logs its line at INFO.
    with events.open("ab") as f:
        f.write(event_message("v", [1.0, 1.0], "d1", "validation") + b"\n")
    config = tmp_path / "c.yaml"
    config.write_text("logging:\n  level: INFO\ngamma:\n  every_events: 0\n")
    args = ["replay", "--docs", str(docs), "--events", str(events), "--out", str(tmp_path / "u")]
    assert main([*args, "--config", str(config), "--no-progress"]) == 0
    assert "engine: gamma" in capsys.readouterr().err  # the config's INFO
    assert main([*args, "--config", str(config), "--log-level", "warning"]) == 0
    assert "engine: gamma" not in capsys.readouterr().err  # the flag, after the subcommand
    assert main(["--log-level", "INFO", *args]) == 0
    assert "engine: gamma" in capsys.readouterr().err  # and before it
    with pytest.raises(SystemExit) as exc:
        main([*args, "--log-level", "LOUD"])
    assert exc.value.code == 2 and "invalid choice: 'LOUD'" in capsys.readouterr().err


def test_paths_are_checked_before_work_naming_the_flag(tmp_path, capsys):
    docs, events = _logs(tmp_path)
    base = ["replay", "--events", str(events)]
    assert main([*base, "--docs", str(tmp_path), "--out", str(tmp_path / "u")]) == 2
    assert f"--docs: {tmp_path} is a directory, not a file" in capsys.readouterr().err
    missing = tmp_path / "nowhere" / "u.jsonl"
    assert main([*base, "--docs", str(docs), "--out", str(missing)]) == 2
    assert f"--out: the folder {missing.parent} does not exist" in capsys.readouterr().err


def test_the_replay_summary_reads_right(tmp_path, capsys):
    from streams import delete_message, doc_message, event_message

    docs = tmp_path / "d.jsonl"
    docs.write_bytes(
        b"\n".join([doc_message(f"d{i}", [1.0, i]) for i in range(3)] + [delete_message("d2")])
        + b"\n"
    )
    events = tmp_path / "e.jsonl"
    good = [event_message(f"q{i}", [1.0, 2.0 + i], "d1", "train") for i in range(1200)]
    events.write_bytes(b"\n".join([b'{"query_id": "x", "query_embedding": [1, 2]', *good]) + b"\n")
    out = tmp_path / "u.jsonl"
    config = tmp_path / "c.yaml"
    config.write_text("gamma:\n  every_events: 0\n")
    assert main(["replay", "--docs", str(docs), "--events", str(events), "--out", str(out),
                 "--config", str(config)]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "events          1,200\n" in text
    assert f"dimension       2 (from {docs.name} line 1)" in text
    assert "(0 selections)" in text  # no validation query: nothing to select on
    assert "updates         1 (1 tombstone)" in text  # the delete's, counted
    assert "wall time" in text and "input lines/s" in text
    letter = orjson.loads((tmp_path / "u.jsonl.dead-letters.jsonl").read_bytes())
    # The dead letter names the file's line; its detail no longer says "line 1" of the message.
    assert letter["position"]["line"] == 1 and "line 1" not in letter["detail"]
    assert "at column" in letter["detail"]
