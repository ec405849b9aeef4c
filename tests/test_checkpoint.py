"""Checkpoints: snapshot and restore continue exactly; files are atomic, versioned and checked."""

from __future__ import annotations

import numpy as np
import pytest
from streams import delete_message, doc_message, event_message, records
from test_engine_behaviour import toy

from stream_nudge.checkpoint import CheckpointError, CheckpointStore
from stream_nudge.config import load_config
from stream_nudge.engine import Engine, restore, snapshot
from stream_nudge.messages import Record, encode_output

OVERRIDES = {
    "gamma": {"every_events": 7},
    "validation": {"window": 6},
    "pending": {"max_events": 5},
}


def stream():
    doc_msgs, events = toy()
    recs = records(doc_msgs[:20], events[:30])
    # Late documents (their clicks wait in the pending store), a delete, an upsert, bad input.
    recs += [Record("events", event_message("late", np.ones(8), "d25", "train"))]
    recs += records(doc_msgs[20:], events[30:])
    recs += [
        Record("docs", delete_message("d3")),
        Record("docs", doc_message("d4", np.arange(8.0))),
        Record("events", b"nope"),
        # Re-deliveries of early events (a training and a waiting click): the pairs applied
        # before a checkpoint must still count once after it.
        Record("events", events[2]),
        Record("events", event_message("late", np.ones(8), "d25", "train")),
    ]
    return recs


def run(recs, engine, batch=5):
    out = []
    for i in range(0, len(recs), batch):
        out.append(engine.process(recs[i : i + batch]))
    return out


def messages(outputs):
    return [m for o in outputs for m in encode_output(o.tombstones, o.updates)]


# Checkpoints fall between batches; splits are batch boundaries (batches of 5). With decay the
# sums' stamps, the window's arrival times and the pending clicks' times must survive too.
@pytest.mark.parametrize("decay", [False, True], ids=["plain", "decay"])
@pytest.mark.parametrize("split", [0, 5, 15, 40, 65, 80, 95, 100])
def test_restore_continues_exactly_where_the_snapshot_was_taken(tmp_path, split, decay):
    extra = {"decay": {"half_life_events": 9.0, "half_life_seconds": 20.0}} if decay else {}
    config = load_config(overrides={**OVERRIDES, **extra})
    recs = stream()
    straight = Engine(config)
    full = run(recs, straight) + [straight.finish()]

    first = Engine(config)
    head = run(recs[:split], first)
    store = CheckpointStore(tmp_path)
    arrays, meta = snapshot(first)
    store.save(arrays, meta, {"events": {"0": split}})
    loaded = store.load()
    assert loaded.offsets == {"events": {"0": split}}
    second = restore(config, loaded.arrays, loaded.meta)
    tail = run(recs[split:], second) + [second.finish()]

    assert messages(head) + messages(tail) == messages(full)
    assert second.gamma == straight.gamma and second.generation == straight.generation
    assert second.dead_letters == straight.dead_letters
    assert second.counts == straight.counts and straight.counts["duplicate_pairs"] == 2
    ids_a, emb_a = straight.adjusted()
    ids_b, emb_b = second.adjusted()
    assert ids_a == ids_b and np.array_equal(emb_a, emb_b)


def test_a_damaged_checkpoint_is_refused_or_falls_back(tmp_path):
    config = load_config()
    engine = Engine(config)
    run(stream()[:40], engine)
    store = CheckpointStore(tmp_path)
    store.save(*snapshot(engine), {"n": 1})
    store.save(*snapshot(engine), {"n": 2})
    data = bytearray(store.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    store.path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        store.load()
    assert CheckpointStore(tmp_path, fallback=True).load().offsets == {"n": 1}


def test_wrong_format_version_is_refused(tmp_path, monkeypatch):
    import stream_nudge.checkpoint as ck

    store = CheckpointStore(tmp_path)
    store.save(*snapshot(Engine(load_config())), {})
    monkeypatch.setattr(ck, "FORMAT_VERSION", 99)
    with pytest.raises(CheckpointError, match="format 1"):
        store.load()


def test_no_checkpoint_is_none(tmp_path):
    assert CheckpointStore(tmp_path / "empty").load() is None


def _run_service(config_path):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "stream_nudge", "run", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_run_refuses_a_state_directory_it_cannot_write_before_touching_kafka(tmp_path):
    # A directory under a regular file cannot exist, for root too.
    (tmp_path / "file").write_text("")
    state = tmp_path / "file" / "state"
    config = tmp_path / "c.yaml"
    config.write_text(
        f"checkpoint:\n  directory: {state}\nkafka:\n  bootstrap_servers: 127.0.0.1:1\n"
    )
    run = _run_service(config)
    assert run.returncode == 1
    assert f"checkpoint.directory {state} is not writable" in run.stderr
    assert "Kafka" not in run.stderr


def test_two_instances_never_share_a_state_directory(tmp_path, monkeypatch):
    state = tmp_path / "state"
    holder = CheckpointStore(state)
    holder.claim()  # this test process is the first instance
    config = tmp_path / "c.yaml"
    config.write_text("kafka:\n  bootstrap_servers: 127.0.0.1:1\n")
    # The environment names the state directory, as every deploy file does.
    monkeypatch.setenv("STREAM_NUDGE_STATE_DIR", str(state))
    run = _run_service(config)
    assert run.returncode == 1
    assert f"is in use by another stream-nudge (pid {__import__('os').getpid()})" in run.stderr
    # Released (or gone with its process), the directory can be taken again.
    holder.release()
    again = CheckpointStore(state)
    again.claim()
    again.release()


def test_a_checkpoint_that_cannot_be_written_raises_a_state_error_not_an_os_error(tmp_path):
    from stream_nudge.checkpoint import StateDirectoryError

    store = CheckpointStore(tmp_path / "state")
    store.save({"x": np.arange(3)}, {}, {})
    # The directory replaced by a file (a lost mount, a wrong path): not Kafka trouble.
    import shutil

    shutil.rmtree(tmp_path / "state")
    (tmp_path / "state").write_text("")
    with pytest.raises(StateDirectoryError, match="cannot write a checkpoint in"):
        store.save({"x": np.arange(3)}, {}, {})
