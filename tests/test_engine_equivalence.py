"""The streaming engine replays a data set to exactly what batch fine_tune computes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import orjson
import pytest
from streams import dataset_messages, fine_tune_on, records, run_engine, write_jsonl

EXACT = {
    "validation": {"window": 100_000},
    "gamma": {"every_events": 0, "every_seconds": 0, "min_improvement": 0.0},
}


@pytest.mark.parametrize("name", ["scifact-minilm", "cranfield-minilm"])
@pytest.mark.parametrize("method", ["nudge-n", "nudge-m"])
def test_replay_equals_fine_tune(shared_data, name, method):
    doc_msgs, event_msgs, (docs, queries, answers, split) = dataset_messages(shared_data, name)
    engine, sink = run_engine(
        records(doc_msgs, event_msgs), {**EXACT, "method": method}, batch_size=517
    )
    batch = fine_tune_on(
        docs, queries, answers, np.flatnonzero(split == 0), np.flatnonzero(split == 1), method
    )
    ids, embeddings = engine.adjusted()
    order = np.array([int(i[1:]) for i in ids])
    assert np.abs(embeddings - batch.embeddings[order]).max() <= 1e-5
    assert engine.gamma == pytest.approx(batch.gamma, rel=1e-6, abs=1e-9)
    # The published updates, reduced by key, are the fine-tuned embeddings of the nudged documents.
    latest = sink.latest()
    assert len(latest) == batch.nudged
    for doc_id, update in latest.items():
        row = int(doc_id[1:])
        assert np.abs(np.array(update["embedding"]) - batch.embeddings[row]).max() <= 1e-5
        assert update["method"] == method and update["similarity"] == (
            "cosine" if method == "nudge-n" else "dot"
        )


def test_cli_replay_twice_is_byte_identical_and_base64_agrees(shared_data, tmp_path):
    doc_msgs, event_msgs, _ = dataset_messages(shared_data, "cranfield-minilm")
    docs = write_jsonl(tmp_path / "docs.jsonl", doc_msgs)
    events = write_jsonl(tmp_path / "events.jsonl", event_msgs)
    b64_docs, b64_events, _ = dataset_messages(shared_data, "cranfield-minilm", b64=True)
    docs64 = write_jsonl(tmp_path / "docs64.jsonl", b64_docs)
    events64 = write_jsonl(tmp_path / "events64.jsonl", b64_events)
    config = tmp_path / "config.yaml"
    config.write_text("validation:\n  window: 100000\ngamma:\n  every_events: 50\n")
    outputs = []
    for name, (d, e) in {"a": (docs, events), "b": (docs, events), "c": (docs64, events64)}.items():
        out = tmp_path / f"{name}.jsonl"
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "stream_nudge",
                "replay",
                "--docs",
                str(d),
                "--events",
                str(e),
                "--out",
                str(out),
                "--config",
                str(config),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr
        assert "gamma" in run.stdout and "dead letters    0" in run.stdout
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    assert len(outputs[0].splitlines()) > 100
    # base64 input gives the same updates (written as JSON arrays either way).
    assert outputs[0] == outputs[2]
    generations = [orjson.loads(line)["generation"] for line in outputs[0].splitlines()]
    assert generations == sorted(generations) and len(set(generations)) == len(generations)
