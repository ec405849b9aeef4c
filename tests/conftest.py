"""Test session set-up: one real Kafka broker for the whole session, started on first use.

Set ``STREAM_NUDGE_KAFKA_BOOTSTRAP=host:port`` to run the Kafka tests against a broker you started
yourself; otherwise ``deploy/kafka/kafka.sh`` starts one on free loopback ports and stops it at the end.
With ``CI`` set, a Kafka test that would skip fails instead.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = REPO / "deploy" / "kafka" / "kafka.sh"
SHARED_DATA = REPO.parent / "shared" / "data"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _in_ci() and item.get_closest_marker("kafka") is not None:
        # In CI the Kafka tests are the point: a skip there would hide a broken broker set-up.
        report.outcome = "failed"
        report.longrepr = f"Kafka test skipped in CI, which is not allowed: {report.longrepr}"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of the session's real broker."""
    given = os.environ.get("STREAM_NUDGE_KAFKA_BOOTSTRAP")
    if given:
        yield given
        return
    port, cport = _free_port(), _free_port()
    while cport == port:
        cport = _free_port()
    run_dir = os.environ.get("STREAM_NUDGE_KAFKA_RUN_DIR") or str(tmp_path_factory.mktemp("kafka"))
    env = dict(
        os.environ,
        KAFKA_PORT=str(port),
        KAFKA_CONTROLLER_PORT=str(cport),
        KAFKA_RUN_DIR=run_dir,
        PYTHON=sys.executable,
    )
    proc = subprocess.run(
        [str(KAFKA_SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        message = f"could not start the Kafka broker:\n{proc.stderr[-4000:]}"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(KAFKA_SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


@pytest.fixture
def kafka_admin(kafka_bootstrap: str) -> Iterator[object]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=60000)
    try:
        yield admin
    finally:
        admin.close()


@pytest.fixture
def make_topic(kafka_admin) -> Iterator[Callable[..., str]]:
    """Create a uniquely named topic; all are deleted when the test ends."""
    from kafka.admin import NewTopic

    created: list[str] = []

    def make(prefix: str = "t", partitions: int = 1, **configs: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        kafka_admin.create_topics(
            [
                NewTopic(
                    name,
                    partitions,
                    1,
                    topic_configs={k.replace("_", "."): v for k, v in configs.items()},
                )
            ]
        )
        created.append(name)
        return name

    yield make
    if created:
        # A failed clean-up must not hide the test's own result.
        with contextlib.suppress(Exception):
            kafka_admin.delete_topics(created)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (read by path, never copied)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the shared data sets are missing: {SHARED_DATA}")
    return SHARED_DATA
