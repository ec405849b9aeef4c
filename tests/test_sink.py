"""``stream-nudge sink`` as a real process: from an updates file and from the updates topic, into
the real PostgreSQL server and LanceDB on disk, killed (SIGKILL) at each step of a batch.

The oracle: the updates reduced by id to the highest generation (a deletion removes the id), which
is what the compacted topic keeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest
import yaml
from backend_helpers import assert_content, lance_content, pg_content

from stream_nudge.messages import encode_tombstone, encode_update

DIM = 6


def update_stream(n_docs: int = 60, rounds: int = 4, seed: int = 0):
    """``(doc id, generation, vector or None)`` in the order an engine would publish them: each
    round republishes some documents and deletes a few, with one rising generation."""
    rng = np.random.default_rng(seed)
    out, generation, alive = [], 0, set()
    for r in range(rounds):
        for i in rng.permutation(n_docs)[: n_docs // (1 if r == 0 else 2)]:
            generation += 1
            doc_id = f"doc-{i}"
            if r > 0 and doc_id in alive and rng.random() < 0.15:
                out.append((doc_id, generation, None))
                alive.discard(doc_id)
            else:
                out.append((doc_id, generation, rng.standard_normal(DIM).astype(np.float32)))
                alive.add(doc_id)
    return out


def compacted(stream) -> dict:
    state = {}
    for doc_id, generation, vector in stream:
        if doc_id not in state or generation > state[doc_id][0]:
            state[doc_id] = (generation, vector)
    return {i: (g, v) for i, (g, v) in state.items() if v is not None}


def update_lines(stream) -> list[bytes]:
    return [
        encode_tombstone(i, g) if v is None else encode_update(i, v, "nudge-n", 0.1, g, "cosine")
        for i, g, v in stream
    ]


BAD_LINES = [b"{not json", b'{"id": "x", "embedding": [1, 2], "generation": 3}']


def write_updates_file(path: Path, stream, bad: bool = True) -> Path:
    lines = update_lines(stream)
    if bad:
        lines[5:5] = BAD_LINES
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def sink_config(path: Path, to: str, **sink) -> Path:
    config = {
        "sink": {"to": to, "create": True, "metrics_port": 0, **sink},
        "logging": {"level": "INFO"},
        "service": {"retry_backoff_max_seconds": 1},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run_sink(config: Path, *args: str, env: dict | None = None, timeout: float = 120.0):
    environment = dict(os.environ, **(env or {}))
    environment.pop("STREAM_NUDGE_KAFKA_BOOTSTRAP", None)
    return subprocess.run(
        [sys.executable, "-m", "stream_nudge", "sink", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
    )


def content_of(to: str, table: str, lance_dir: Path | None):
    return lance_content(lance_dir, table) if lance_dir is not None else pg_content(to, table)


@pytest.fixture(params=["postgresql", "lancedb"])
def backend_url(request, tmp_path):
    """``(url, table, lance directory or None)`` of a fresh table in either backend."""
    table = f"t_{uuid.uuid4().hex[:10]}"
    if request.param == "lancedb":
        return f"lancedb://{tmp_path / 'lance'}?table={table}", table, tmp_path / "lance"
    dsn = request.getfixturevalue("postgres_dsn")
    return dsn, table, None


def test_sink_from_a_file_ends_with_the_compacted_updates_and_dead_letters_the_rest(
    tmp_path, backend_url
):
    url, table, lance_dir = backend_url
    stream = update_stream()
    updates = write_updates_file(tmp_path / "updates.jsonl", stream)
    config = sink_config(tmp_path / "c.yaml", url, table=table, batch_records=40)
    done = run_sink(config, "--from", str(updates))
    assert done.returncode == 0, done.stderr
    assert_content(content_of(url, table, lance_dir), compacted(stream))
    dead = [
        orjson.loads(line)
        for line in (tmp_path / "updates.jsonl.sink-dead-letters.jsonl").read_bytes().splitlines()
    ]
    assert [d["reason"] for d in dead] == ["invalid_json", "wrong_dimension"]
    assert [d["position"]["line"] for d in dead] == [6, 7]
    if lance_dir is None:
        # --create built the HNSW index once the file was written (not before the first load).
        import psycopg

        with psycopg.connect(url) as conn:
            (definition,) = conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE tablename = %s AND indexdef LIKE %s",
                (table, "%hnsw%"),
            ).fetchone()
        assert "vector_cosine_ops" in definition
        assert "building the HNSW index" in done.stderr
    # Run again: it resumes after the last line, reads nothing and changes nothing.
    again = run_sink(config, "--from", str(updates))
    assert again.returncode == 0, again.stderr
    assert f"from line {len(stream) + len(BAD_LINES) + 1}" in again.stderr
    assert "0 records read" in again.stderr
    assert_content(content_of(url, table, lance_dir), compacted(stream))


# (point, the visit to kill at): the first batch holds the dead letters.
CRASH_POINTS = {
    "postgresql": [
        ("sink:dead_letters", 1),
        ("sink:write", 2),
        ("postgres:commit", 2),
        ("sink:written", 2),
    ],
    "lancedb": [("sink:write", 2), ("lancedb:rows", 2), ("lancedb:marks", 2), ("sink:written", 2)],
}


def test_a_sink_killed_at_any_step_of_a_batch_ends_equal_to_the_compacted_updates(
    tmp_path, backend_url
):
    url, table, lance_dir = backend_url
    kind = "lancedb" if lance_dir is not None else "postgresql"
    # Two rounds: half the documents' last update is in the first, where the kills land, so a
    # record skipped at a resume shows in the content.
    stream = update_stream(n_docs=150, rounds=2, seed=3)
    updates = write_updates_file(tmp_path / "updates.jsonl", stream)
    config = sink_config(tmp_path / "c.yaml", url, table=table, batch_records=25)
    starts = []
    for point, n in CRASH_POINTS[kind]:
        killed = run_sink(
            config, "--from", str(updates), env={"STREAM_NUDGE_CRASH_AT": f"{point}:{n}"}
        )
        assert killed.returncode == -signal.SIGKILL, (
            point,
            killed.returncode,
            killed.stderr[-2000:],
        )
        starts.append(int(killed.stderr.split("from line ")[1].split()[0]))
    done = run_sink(config, "--from", str(updates))
    assert done.returncode == 0, done.stderr
    assert_content(content_of(url, table, lance_dir), compacted(stream))
    last = int(done.stderr.split("from line ")[1].split()[0])
    lines = len(stream) + len(BAD_LINES)
    assert f"{lines - last + 1} records read" in done.stderr
    # Each run resumed where the backend's offsets said, not from the start.
    assert starts[0] == 1 and starts == sorted(starts) and len(set(starts)) >= 3
    dead = (tmp_path / "updates.jsonl.sink-dead-letters.jsonl").read_bytes().splitlines()
    # The dead letters were sent before their batch was written: a kill may repeat, never lose.
    assert {orjson.loads(d)["position"]["line"] for d in dead} == {6, 7}


def test_sink_refuses_to_start_without_create_and_says_how(tmp_path, postgres_dsn):
    config = sink_config(tmp_path / "c.yaml", postgres_dsn, create=False, table="missing_table")
    updates = write_updates_file(tmp_path / "u.jsonl", update_stream(n_docs=3, rounds=1), bad=False)
    done = run_sink(config, "--from", str(updates))
    assert done.returncode == 1
    assert "missing_table does not exist" in done.stderr and "--create" in done.stderr


def test_sink_without_a_backend_or_with_a_bad_url_says_so(tmp_path):
    updates = write_updates_file(tmp_path / "u.jsonl", update_stream(n_docs=3, rounds=1), bad=False)
    none = run_sink(sink_config(tmp_path / "c.yaml", ""), "--from", str(updates))
    assert none.returncode == 1 and "sink.to or --to" in none.stderr
    bad = run_sink(sink_config(tmp_path / "c.yaml", "mysql://x"), "--from", str(updates))
    assert bad.returncode == 2 and "sink.to" in bad.stderr
    missing = run_sink(
        sink_config(tmp_path / "c.yaml", "lancedb://x"), "--from", str(tmp_path / "nope")
    )
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_a_sink_pointed_at_a_database_that_does_not_exist_stops_at_once(tmp_path, postgres_dsn):
    wrong = postgres_dsn.rsplit("/", 1)[0] + "/no_such_database"
    updates = write_updates_file(tmp_path / "u.jsonl", update_stream(n_docs=3, rounds=1), bad=False)
    done = run_sink(sink_config(tmp_path / "c.yaml", wrong), "--from", str(updates), timeout=30)
    assert done.returncode == 1
    assert "no_such_database" in done.stderr and "check sink.to" in done.stderr
    assert "retrying" not in done.stderr


def test_a_sink_whose_metrics_port_is_taken_says_so(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "c.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "sink": {"to": f"lancedb://{tmp_path}", "metrics_port": port},
                    "metrics": {"host": "127.0.0.1"},
                }
            )
        )
        updates = write_updates_file(tmp_path / "u.jsonl", update_stream(3, 1), bad=False)
        done = run_sink(config, "--from", str(updates), timeout=30)
    assert done.returncode == 1 and f"127.0.0.1:{port}" in done.stderr
    assert "sink.metrics_port" in done.stderr
