"""Running ``stream-nudge run`` as a real process against the real broker, and reading its output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from stream_nudge.checkpoint import CheckpointStore


def produce(
    bootstrap: str, topic: str, messages: list[bytes], keys: list[bytes] | None = None
) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    for i, m in enumerate(messages):
        producer.send(topic, value=m, key=keys[i] if keys else None)
    producer.flush()
    producer.close()


def write_config(
    path: Path, bootstrap: str, topics: dict, state: Path, client="confluent-kafka", **sections
) -> Path:
    config = {
        "kafka": {
            "client": client,
            "bootstrap_servers": bootstrap,
            "group_id": f"g-{topics['updates']}",
            "topics": topics,
            "partitions": 1,
            # A killed member leaves the group after this long (the broker's minimum is 6 s):
            # the restarts of the kill tests wait for it.
            "session_timeout_ms": 10_000,
        },
        "checkpoint": {"directory": str(state), "every_seconds": 0.5},
        "metrics": {"port": 0},
        "logging": {"level": "INFO"},
        "service": {"idle_select_seconds": 0.5, "retry_backoff_max_seconds": 2},
        "publish": {"min_change": 0.0},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    path.write_text(yaml.safe_dump(config))
    return path


def start(config: Path, log: Path, **env_vars: str) -> subprocess.Popen:
    env = dict(os.environ, **env_vars)
    env.pop("STREAM_NUDGE_KAFKA_BOOTSTRAP", None)
    return subprocess.Popen(
        [sys.executable, "-m", "stream_nudge", "run", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
    )


def checkpoint_meta(state: Path) -> dict | None:
    try:
        checkpoint = CheckpointStore(state).load()
    except Exception:
        return None
    return None if checkpoint is None else checkpoint.meta


def committed_engine(config_path: Path):
    """The engine the service's committed state holds: its checkpoint (at_least_once) or its
    changelog topics (exactly_once); None if there is none yet."""
    from stream_nudge.config import load_config
    from stream_nudge.engine import restore
    from stream_nudge.kafka.changelog import read_changelog

    # The file as the service reads it: the service is started without the environment's
    # broker override (see start), so the override must not send this reader elsewhere.
    saved = os.environ.pop("STREAM_NUDGE_KAFKA_BOOTSTRAP", None)
    try:
        config = load_config(config_path)
    finally:
        if saved is not None:
            os.environ["STREAM_NUDGE_KAFKA_BOOTSTRAP"] = saved
    if config.processing.guarantee == "at_least_once":
        try:
            checkpoint = CheckpointStore(config.checkpoint.directory).load()
        except Exception:
            return None
        return None if checkpoint is None else restore(config, checkpoint.arrays, checkpoint.meta)
    from stream_nudge.engine.changelog import ChangelogError

    try:
        engine = read_changelog(config).engine
    except ChangelogError:
        # Read while the service commits: the topics' ends were taken a moment apart, and a
        # transaction committed in between is in one topic and not yet in another. Read again.
        return None
    return engine


def wait_until_done(
    config_path: Path, n_events: int, proc: subprocess.Popen, timeout: float = 240.0
):
    """Until the committed state shows every event processed and gamma selected after the last
    one; that engine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        engine = committed_engine(config_path)
        if engine is not None and engine.events == n_events and engine.events_since_selection == 0:
            return engine
        if proc.poll() is not None:
            raise AssertionError(f"the service exited with {proc.returncode}")
        time.sleep(0.5)
    raise AssertionError("the service did not finish in time")


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 60.0) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout=timeout)


def read_topic(bootstrap: str, topic: str, timeout: float = 60.0) -> list:
    # read_committed: what a reader of exactly_once output sees (the same as everything for
    # at_least_once output, which is written outside transactions).
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed",
    )
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    ends = consumer.end_offsets(parts)
    out = []
    deadline = time.monotonic() + timeout
    while any(consumer.position(tp) < ends[tp] for tp in parts) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            out.extend(records)
    consumer.close()
    return out


def reduce_updates(records) -> dict:
    """The updates topic reduced by key, as a compacted topic keeps it (None: deleted)."""
    state = {}
    for r in records:
        state[r.key.decode()] = None if r.value is None else orjson.loads(r.value)
    return state


def without_generation(state: dict) -> dict:
    return {
        k: None if v is None else {f: x for f, x in v.items() if f != "generation"}
        for k, v in state.items()
    }


def children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid`` (from /proc), by pid, with their command lines."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            # The command name may hold spaces and parentheses: the fields follow the last ')'.
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out[int(entry.name)] = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
        except (OSError, ValueError):
            continue
    return out
