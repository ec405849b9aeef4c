"""The README's first command: the demo runs and shows a real gain."""

from __future__ import annotations

import subprocess
import sys

from stream_nudge.demo import run_demo


def test_demo_fine_tuning_beats_the_original_embeddings():
    lines = []
    results = run_demo(print_fn=lines.append)
    base_hit, base_ndcg = results["no fine-tuning"]
    for name in ("NUDGE-N (streamed)", "NUDGE-M (streamed)"):
        hit, ndcg = results[name]
        assert hit > base_hit + 0.1 and ndcg > base_ndcg + 0.05
    assert any("hit@1" in line and "NDCG@10" in line for line in lines)


def test_demo_command_prints_the_table():
    run = subprocess.run(
        [sys.executable, "-m", "stream_nudge", "demo"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "no fine-tuning" in run.stdout and "NUDGE-N (streamed)" in run.stdout
