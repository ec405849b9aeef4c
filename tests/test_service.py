"""``stream-nudge run`` against the real broker: same result as replay, through stops, kills and outages."""

from __future__ import annotations

import os
import random
import re
import signal
import time

import numpy as np
import pytest
from service_helpers import (
    checkpoint_meta,
    children,
    committed_engine,
    produce,
    read_topic,
    reduce_updates,
    start,
    stop,
    wait_until_done,
    without_generation,
    write_config,
)
from streams import dataset_messages, records, run_engine, sums_by_id

from stream_nudge.checkpoint import CheckpointStore
from stream_nudge.config import load_config
from stream_nudge.sinks import MemorySink

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ENGINE = {"gamma": {"every_events": 100, "every_seconds": 0}, "publish": {"min_change": 0.0}}


@pytest.fixture(params=["confluent-kafka", "kafka-python"])
def client(request) -> str:
    """Every service test runs with both Kafka clients."""
    return request.param


# The tests of what checkpoints do run the service at least once; the others with both
# guarantees.
AT_LEAST_ONCE = {"guarantee": "at_least_once"}


@pytest.fixture(params=["exactly_once", "at_least_once"])
def guarantee(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def scifact(shared_data):
    doc_msgs, event_msgs, _ = dataset_messages(shared_data, "scifact-minilm")
    # The replay of the same logs: what the service must arrive at.
    engine, sink = run_engine(records(doc_msgs, event_msgs), ENGINE)
    return doc_msgs, event_msgs, engine, sink


def make_topics(make_topic):
    return {
        "docs": make_topic("docs"),
        "events": make_topic("events"),
        "updates": make_topic("updates", cleanup_policy="compact"),
        "dead_letters": make_topic("dead"),
    }


# Small polls, so that a run lasts long enough to be interrupted.
SLOW_POLLS = {"max_poll_records": 40, "poll_timeout_ms": 100}


def prepare(
    bootstrap, topics, doc_msgs, event_msgs, tmp_path, client, guarantee="exactly_once", **sections
):
    """Fill the input topics; write the service's config. Returns (state dir, config path)."""
    produce(bootstrap, topics["docs"], doc_msgs)
    produce(bootstrap, topics["events"], event_msgs)
    state = tmp_path / "state"
    path = tmp_path / "c.yaml"
    processing = {"guarantee": guarantee, **sections.pop("processing", {})}
    config = write_config(
        path, bootstrap, topics, state, client, **ENGINE, processing=processing, **sections
    )
    return state, config


def check_same_as_replay(bootstrap, topics, config, replay_engine, replay_sink: MemorySink):
    records = read_topic(bootstrap, topics["updates"])
    got = reduce_updates(records)
    assert without_generation(got) == without_generation(replay_sink.latest())
    # Nothing lost, nothing counted twice: the query sums are the replay's, exactly.
    restored = committed_engine(config)
    expected, sums = sums_by_id(replay_engine), sums_by_id(restored)
    assert sums.keys() == expected.keys()
    for doc_id, value in expected.items():
        assert np.array_equal(sums[doc_id], value)
    assert restored.gamma == replay_engine.gamma
    # Generations only grow per document, across restarts.
    last = {}
    for r in read_topic(bootstrap, topics["updates"]):
        g = int(dict(r.headers)["generation"])
        assert g > last.get(r.key, 0)
        last[r.key] = g
    if load_config(config).processing.guarantee == "exactly_once":
        # Each generation once, none missing: what was committed was written once, and the
        # counter, part of the state, went back with it after every crash.
        generations = sorted(int(dict(r.headers)["generation"]) for r in records)
        assert generations == list(range(1, len(records) + 1))
        assert restored.generation == len(records)


def test_service_end_to_end_equals_replay(
    kafka_bootstrap, make_topic, scifact, tmp_path, client, guarantee
):
    doc_msgs, event_msgs, replay_engine, replay_sink = scifact
    topics = make_topics(make_topic)
    from conftest import _free_port

    port = _free_port()
    _, config = prepare(
        kafka_bootstrap,
        topics,
        doc_msgs,
        event_msgs,
        tmp_path,
        client,
        guarantee,
        metrics={"port": port},
        logging={"format": "json"},
    )
    proc = start(config, tmp_path / "service.log")
    try:
        wait_until_done(config, len(event_msgs), proc)
        import urllib.request

        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert health.status == 200
        metrics = (
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        )
        assert (
            f'stream_nudge_events_consumed_total{{topic="events"}} {float(len(event_msgs))}'
            in metrics
        )
        assert "stream_nudge_gamma " in metrics and "stream_nudge_consumer_lag" in metrics
        if guarantee == "exactly_once":
            assert "stream_nudge_commit_duration_seconds_count" in metrics
            assert "stream_nudge_changelog_records_per_commit_count" in metrics
        else:
            assert "stream_nudge_checkpoint_duration_seconds_count" in metrics
    finally:
        assert stop(proc) == 0, (tmp_path / "service.log").read_text()[-3000:]
    check_same_as_replay(kafka_bootstrap, topics, config, replay_engine, replay_sink)
    import orjson

    lines = [
        orjson.loads(line)
        for line in (tmp_path / "service.log").read_text().splitlines()
        if line.startswith("{")
    ]
    selections = [entry for entry in lines if entry["message"].startswith("gamma ")]
    assert selections and all(
        {"gamma", "score_after", "nudged"} <= entry.keys() for entry in selections
    )


def test_sigterm_and_sigkill_mid_stream_then_restart_gives_the_same_result(
    kafka_bootstrap, make_topic, scifact, tmp_path, client, guarantee
):
    """Exactly once, the state directory is also wiped before every other restart: the member
    restores from the changelog alone, or from its local cache and the changelog's tail."""
    import shutil

    doc_msgs, event_msgs, replay_engine, replay_sink = scifact
    topics = make_topics(make_topic)
    state, config = prepare(
        kafka_bootstrap,
        topics,
        doc_msgs,
        event_msgs,
        tmp_path,
        client,
        guarantee,
        kafka=SLOW_POLLS,
        processing={"commit_interval_ms": 200, "cache_interval_ms": 300},
    )
    log = tmp_path / "service.log"
    rng = random.Random(7)
    # One SIGTERM, then five SIGKILLs at random moments, restarting each time.
    for i, sig in enumerate([signal.SIGTERM] + [signal.SIGKILL] * 5):
        proc = start(config, log)
        # Interrupt it while it works: after it has connected (a SIGTERM before its handler is
        # installed would just end the process), at a random moment.
        deadline = time.monotonic() + 60
        while log.read_text().count("connected to") <= i and time.monotonic() < deadline:
            time.sleep(0.05)
        # The Kafka clients run in the service's own process: nothing of it can outlive a kill
        # (a producer left behind could write an older generation after the restart).
        assert children(proc.pid) == {}
        time.sleep(rng.uniform(0.5, 3.0))
        code = stop(proc, sig)
        assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), log.read_text()[-3000:]
        if guarantee == "exactly_once" and i % 2:
            shutil.rmtree(state, ignore_errors=True)
    proc = start(config, log)
    try:
        wait_until_done(config, len(event_msgs), proc)
        # The last run may have found all the work done: it must be up (its SIGTERM handler in
        # place) before it is stopped, or the signal ends it before it could finish cleanly.
        deadline = time.monotonic() + 60
        while log.read_text().count("connected to") <= 6 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        assert stop(proc) == 0, log.read_text()[-3000:]
    text = log.read_text()
    restored = (
        "restored from the changelog: " if guarantee == "exactly_once" else "restored checkpoint"
    )
    assert text.count(restored) >= 5
    if guarantee == "exactly_once":
        cached = [
            int(n)
            for n in re.findall(
                r"restored from the changelog: (\d+) records from the local cache", text
            )
        ]
        assert max(cached) > 0, "no restart used the local cache"
        assert "no local cache" in text  # and the wiped ones read the changelog alone
    check_same_as_replay(kafka_bootstrap, topics, config, replay_engine, replay_sink)


def test_a_kill_at_each_step_of_a_commit_and_during_a_restore_changes_nothing(
    kafka_bootstrap, make_topic, scifact, tmp_path, client
):
    """Exactly once. The service kills itself (SIGKILL, stream_nudge.faults) with the batch's
    updates in the open transaction, with the changelog records and offsets in it but not
    committed, just after a commit, and during a restore; each time its state directory is wiped
    and it starts again. A read_committed reader then sees each generation once, and the result
    and the query sums are the replay's."""
    import shutil

    doc_msgs, event_msgs, replay_engine, replay_sink = scifact
    topics = make_topics(make_topic)
    state, config = prepare(
        kafka_bootstrap,
        topics,
        doc_msgs,
        event_msgs,
        tmp_path,
        client,
        "exactly_once",
        kafka=SLOW_POLLS,
        processing={"commit_interval_ms": 200},
    )
    log = tmp_path / "service.log"
    for point in ("commit:changelog:3", "commit:offsets:3", "commit:committed:3", "restore:1"):
        proc = start(config, log, STREAM_NUDGE_CRASH_AT=point)
        code = proc.wait(timeout=120)
        assert code == -signal.SIGKILL, (point, code, log.read_text()[-3000:])
        shutil.rmtree(state, ignore_errors=True)
    proc = start(config, log)
    try:
        wait_until_done(config, len(event_msgs), proc)
    finally:
        assert stop(proc) == 0, log.read_text()[-3000:]
    # Every start but the one killed during its restore (before it says so).
    assert log.read_text().count("restored from the changelog: ") == 4
    check_same_as_replay(kafka_bootstrap, topics, config, replay_engine, replay_sink)


def test_a_rebalance_during_a_commit_loses_nothing_and_counts_nothing_twice(
    kafka_bootstrap, make_topic, scifact, tmp_path, client
):
    """Exactly once. The service stalls inside a commit (its records and offsets are in the
    transaction, not committed: stream_nudge.faults) while a consumer joins its group, so the
    group rebalances during the commit; then, committing every 50 ms, consumers join and leave
    while it works. A read_committed reader sees each generation once; the result and the sums
    are the replay's."""
    from kafka import KafkaConsumer

    doc_msgs, event_msgs, replay_engine, replay_sink = scifact
    topics = make_topics(make_topic)
    _, config = prepare(
        kafka_bootstrap,
        topics,
        doc_msgs,
        event_msgs,
        tmp_path,
        client,
        "exactly_once",
        kafka=SLOW_POLLS,
        processing={"commit_interval_ms": 50},
    )
    log = tmp_path / "service.log"

    def intrude(seconds: float) -> None:
        # Its position is never committed (a member that commits what it did not process
        # would lose records whatever the service does).
        intruder = KafkaConsumer(
            topics["docs"],
            topics["events"],
            bootstrap_servers=kafka_bootstrap,
            group_id=f"g-{topics['updates']}",
            enable_auto_commit=False,
        )
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            intruder.poll(timeout_ms=100)
        intruder.close()

    proc = start(config, log, STREAM_NUDGE_STALL_AT="commit:offsets:5:4")
    try:
        deadline = time.monotonic() + 60
        while "stalling at commit:offsets" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        intrude(6.0)
        rng = random.Random(3)
        for _ in range(3):
            intrude(rng.uniform(0.5, 2.0))
            time.sleep(rng.uniform(0.2, 1.0))
        assert proc.poll() is None, log.read_text()[-3000:]
        wait_until_done(config, len(event_msgs), proc)
    finally:
        assert stop(proc) == 0, log.read_text()[-3000:]
    # The rebalance the stalled commit met (the later intruders' rebalances revoke only when
    # the service holds partitions then, which is up to the assignor: not asserted).
    text = log.read_text()
    assert "partitions revoked" in text[text.index("stalling at commit:offsets") :]
    check_same_as_replay(kafka_bootstrap, topics, config, replay_engine, replay_sink)


def test_a_zombie_member_is_fenced_and_its_late_commit_changes_nothing(
    kafka_bootstrap, make_topic, scifact, tmp_path, client
):
    """Exactly once. A member stops (SIGSTOP) mid-stream; a second one with the same
    configuration (its own state directory) starts, fences it and finishes the work. The first
    one, let go again, is fenced at its late commit and exits 1; nothing of it reaches a
    read_committed reader."""
    doc_msgs, event_msgs, replay_engine, replay_sink = scifact
    topics = make_topics(make_topic)
    _, config = prepare(
        kafka_bootstrap,
        topics,
        doc_msgs,
        event_msgs,
        tmp_path,
        client,
        "exactly_once",
        kafka=SLOW_POLLS,
    )
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = start(config, first_log)
    second = None
    try:
        deadline = time.monotonic() + 60
        while f"assigned {topics['docs']}" not in first_log.read_text():
            assert time.monotonic() < deadline, first_log.read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(1.5)  # some batches processed, some committed, some in the open transaction
        first.send_signal(signal.SIGSTOP)
        second_config = tmp_path / "second.yaml"
        second_config.write_text(
            config.read_text().replace(str(tmp_path / "state"), str(tmp_path / "state2"))
        )
        second = start(second_config, second_log)
        wait_until_done(second_config, len(event_msgs), second, timeout=300)
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=120) == 1, first_log.read_text()[-3000:]
        assert "stopping: fenced by a newer member" in first_log.read_text()
        assert second.poll() is None, second_log.read_text()[-3000:]
        assert stop(second) == 0, second_log.read_text()[-3000:]
        second = None
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
    check_same_as_replay(kafka_bootstrap, topics, config, replay_engine, replay_sink)


def test_an_at_least_once_checkpoint_is_migrated_into_the_changelog(
    kafka_bootstrap, make_topic, scifact, tmp_path, client
):
    """A deployment of at_least_once stops mid-stream and starts again as exactly once (the
    new default) on the same state directory: the checkpoint becomes the changelog's first
    commit, and the result is the replay's, generations continuing without a gap."""
    doc_msgs, event_msgs, replay_engine, replay_sink = scifact
    topics = make_topics(make_topic)
    state, config = prepare(
        kafka_bootstrap,
        topics,
        doc_msgs,
        event_msgs,
        tmp_path,
        client,
        "at_least_once",
        kafka=SLOW_POLLS,
    )
    log = tmp_path / "service.log"
    proc = start(config, log)
    try:
        deadline = time.monotonic() + 120
        while not ((checkpoint_meta(state) or {}).get("events", 0) > 100):
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        assert stop(proc) == 0, log.read_text()[-3000:]
    text = config.read_text()
    assert "guarantee: at_least_once" in text
    config.write_text(text.replace("guarantee: at_least_once", "guarantee: exactly_once"))
    proc = start(config, log)
    try:
        wait_until_done(config, len(event_msgs), proc)
    finally:
        assert stop(proc) == 0, log.read_text()[-3000:]
    assert "migrating the at_least_once checkpoint" in log.read_text()
    check_same_as_replay(kafka_bootstrap, topics, config, replay_engine, replay_sink)


def test_an_empty_changelog_beside_committed_offsets_is_refused(
    kafka_bootstrap, make_topic, tmp_path, client
):
    """The changelog topics are gone but the group's offsets say input was consumed: starting
    empty from those offsets would lose the state silently. The service refuses (exit 1) and
    says how to rebuild from the input."""
    import subprocess
    import sys

    from kafka import KafkaConsumer
    from kafka import TopicPartition as KafkaTopicPartition
    from kafka.structs import OffsetAndMetadata

    topics = make_topics(make_topic)
    produce(kafka_bootstrap, topics["docs"], [b"{}"] * 5)
    config = write_config(tmp_path / "c.yaml", kafka_bootstrap, topics, tmp_path / "state", client)
    group = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=f"g-{topics['updates']}")
    group.commit({KafkaTopicPartition(topics["docs"], 0): OffsetAndMetadata(5, "", -1)})
    group.close()
    run = subprocess.run(
        [sys.executable, "-m", "stream_nudge", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 1, output[-3000:]
    assert "Refusing to start on empty state" in output and "--reset-offsets" in output


def test_a_checkpoint_failing_in_a_rebalance_does_not_hold_the_rebalance(
    kafka_bootstrap, make_topic, scifact, tmp_path, client
):
    """The state directory goes away while the service is idle; then a second member joins and
    the rebalance asks for a checkpoint, which fails. The rebalance goes on (the new member gets
    partitions) and the service stops at once, unhealthy (exit 1), rather than later or never."""
    import shutil

    topics, state, log, proc = _idle_service(kafka_bootstrap, make_topic, scifact, tmp_path, client)
    try:
        shutil.rmtree(state)
        state.write_text("")
        intruder = _second_member(kafka_bootstrap, topics)
        deadline = time.monotonic() + 60
        while not intruder.assignment() and time.monotonic() < deadline:
            intruder.poll(timeout_ms=200)
        assigned = intruder.assignment()
        proc.wait(timeout=60)
        intruder.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert assigned, text[-3000:]
    assert proc.returncode == 1 and "stopping: cannot write a checkpoint in" in text, text[-3000:]


def _idle_service(bootstrap, make_topic, scifact, tmp_path, client):
    """A service over 200 documents and no events, once it has its partitions; no periodic
    checkpoint. Returns (topics, state dir, log, process)."""
    topics = make_topics(make_topic)
    produce(bootstrap, topics["docs"], scifact[0][:200])
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "c.yaml",
        bootstrap,
        topics,
        state,
        client,
        **ENGINE,
        checkpoint={"every_seconds": 3600},
        processing=AT_LEAST_ONCE,
    )
    log = tmp_path / "service.log"
    proc = start(config, log)
    deadline = time.monotonic() + 60
    while f"assigned {topics['docs']}" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    return topics, state, log, proc


def _second_member(bootstrap, topics):
    """A consumer joining the service's group: polling it makes the group rebalance."""
    from kafka import KafkaConsumer

    return KafkaConsumer(
        topics["docs"],
        topics["events"],
        bootstrap_servers=bootstrap,
        group_id=f"g-{topics['updates']}",
    )


def test_a_bad_config_exits_2_and_a_corrupt_checkpoint_refuses_to_start(kafka_bootstrap, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka:\n  topics:\n    updatez: x\n")
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "stream_nudge", "run", "--config", str(bad)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "kafka.topics.updatez: unknown key" in run.stderr
    state = tmp_path / "state"
    state.mkdir()
    (state / "checkpoint.npz").write_bytes(b"not a checkpoint")
    config = write_config(
        tmp_path / "c.yaml",
        kafka_bootstrap,
        {"docs": "d", "events": "e", "updates": "u", "dead_letters": "x"},
        state,
        processing=AT_LEAST_ONCE,
    )
    run = subprocess.run(
        [sys.executable, "-m", "stream_nudge", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        run.returncode == 1
        and "checkpoint" in run.stdout + run.stderr
        and "unreadable" in run.stdout + run.stderr
    )
    assert checkpoint_meta(state) is None


def test_broker_stopped_mid_stream_and_started_again(scifact, tmp_path, client, guarantee):
    """A broker of its own (stopping the session's would disturb other tests)."""
    import subprocess
    import sys

    from conftest import KAFKA_SCRIPT, _free_port
    from kafka.admin import KafkaAdminClient, NewTopic

    doc_msgs, event_msgs, replay_engine, replay_sink = scifact
    port, cport = _free_port(), _free_port()
    env = dict(
        os.environ,
        KAFKA_PORT=str(port),
        KAFKA_CONTROLLER_PORT=str(cport),
        KAFKA_RUN_DIR=str(tmp_path / "broker"),
        KAFKA_KEEP_DATA="1",
        PYTHON=sys.executable,
    )

    def broker(command):
        run = subprocess.run(
            [str(KAFKA_SCRIPT), command], env=env, capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, run.stderr

    bootstrap = f"127.0.0.1:{port}"
    broker("start")
    proc = None
    try:
        topics = {"docs": "docs", "events": "events", "updates": "updates", "dead_letters": "dead"}
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic("docs", 1, 1), NewTopic("events", 1, 1)])
        admin.close()
        _, config = prepare(
            bootstrap, topics, doc_msgs, event_msgs, tmp_path, client, guarantee, kafka=SLOW_POLLS
        )
        log = tmp_path / "service.log"
        proc = start(config, log)
        time.sleep(3.0)
        broker("stop")
        time.sleep(6.0)
        assert proc.poll() is None, "the service must survive the outage"
        broker("start")
        wait_until_done(config, len(event_msgs), proc, timeout=300)
        assert stop(proc) == 0
        proc = None
        check_same_as_replay(bootstrap, topics, config, replay_engine, replay_sink)
    finally:
        if proc is not None:
            proc.kill()
        env["KAFKA_KEEP_DATA"] = "0"
        subprocess.run([str(KAFKA_SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


def test_a_rebalance_checkpoints_before_partitions_are_given_up(
    kafka_bootstrap, make_topic, scifact, tmp_path, client
):
    from kafka import KafkaConsumer

    topics, state, log, proc = _idle_service(kafka_bootstrap, make_topic, scifact, tmp_path, client)
    try:
        assert checkpoint_meta(state) is None  # no periodic checkpoint yet
        intruder = _second_member(kafka_bootstrap, topics)
        deadline = time.monotonic() + 60
        while "partitions revoked" not in log.read_text() and time.monotonic() < deadline:
            intruder.poll(timeout_ms=200)
        intruder.close()
        assert "partitions revoked: checkpoint written" in log.read_text()
        assert checkpoint_meta(state) is not None
        # The checkpoint's offsets reach the group too (kafka-python runs the rebalance listener
        # on its network thread, where a commit cannot wait: it is made after the rebalance).
        from kafka import TopicPartition

        # A consumer of the group that subscribes to nothing reads its offsets without joining.
        reader = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=f"g-{topics['updates']}")
        deadline = time.monotonic() + 30
        committed = None
        while committed is None and time.monotonic() < deadline:
            committed = reader.committed(TopicPartition(topics["docs"], 0))
            time.sleep(0.2)
        reader.close()
        saved = CheckpointStore(state).load().offsets[topics["docs"]]["0"]
        assert committed == saved
        assert "could not commit offsets" not in log.read_text()
    finally:
        assert stop(proc) == 0


def test_a_checkpoint_that_cannot_be_written_stops_the_service_instead_of_rereading_forever(
    kafka_bootstrap, make_topic, scifact, tmp_path, client
):
    import shutil

    topics = make_topics(make_topic)
    produce(kafka_bootstrap, topics["docs"], scifact[0][:200])
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "c.yaml",
        kafka_bootstrap,
        topics,
        state,
        client,
        **ENGINE,
        processing=AT_LEAST_ONCE,
    )
    log = tmp_path / "service.log"
    proc = start(config, log)
    try:
        deadline = time.monotonic() + 60
        while checkpoint_meta(state) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert checkpoint_meta(state) is not None, log.read_text()[-2000:]
        # The state directory goes away under the service (a lost volume, a wrong path).
        shutil.rmtree(state)
        state.write_text("")
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == 1, text[-2000:]
    assert "stopping: cannot write a checkpoint in" in text
    assert "Kafka trouble" not in text
