"""The command line: version, help, and honest exit codes."""

from __future__ import annotations

import subprocess
import sys

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
