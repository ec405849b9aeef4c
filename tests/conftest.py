"""Test session set-up: one real Kafka broker for the whole session, started on first use.

Set ``STREAM_NUDGE_KAFKA_BOOTSTRAP=host:port`` to run the Kafka tests against a broker you started
yourself; otherwise ``deploy/kafka/kafka.sh`` starts one on free loopback ports and stops it at the end.
With ``CI`` set, a Kafka test that would skip fails instead.

With ``STREAM_NUDGE_TEST_BLOCKS=small`` (a step of ``.ci/run``) the products of the corpus pass,
the window refresh and the selection are cut into much smaller blocks, and replays in tests read
smaller batches: results that hung on how BLAS blocked a product would show there.

The tests on real retrieval data read the folder ``STREAM_NUDGE_DATA`` names (by default
``../shared/data`` beside the checkout; see the README). Without it they are skipped with that
reason; with ``STREAM_NUDGE_REQUIRE_DATA`` set (as ``.ci/run`` does) such a skip fails instead.
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
# The one setting for the real data sets: a folder holding scifact-minilm/, cranfield-minilm/.
SHARED_DATA = Path(os.environ.get("STREAM_NUDGE_DATA") or REPO.parent / "shared" / "data")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() not in ("", "0", "false", "no")


def _in_ci() -> bool:
    return _flag("CI")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("STREAM_NUDGE_TEST_BLOCKS") == "small":
        from stream_nudge.core import finetune, selection
        from stream_nudge.engine import window

        # Blocks of a few hundred cells instead of millions: other product shapes, other kernels.
        finetune._PASS_CELLS = window._PASS_CELLS = 1 << 9
        window._FIRST_BLOCK = 7
        selection._BLOCK_ELEMENTS = 1 << 10
        selection._QUERY_BLOCK = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Whatever needs the PostgreSQL server is marked so: -m "not postgres" leaves it out.
    for item in items:
        if "postgres_dsn" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not report.skipped:
        return
    if _in_ci() and item.get_closest_marker("kafka") is not None:
        # In CI the Kafka tests are the point: a skip there would hide a broken broker set-up.
        report.outcome = "failed"
        report.longrepr = f"Kafka test skipped in CI, which is not allowed: {report.longrepr}"
    elif _flag("STREAM_NUDGE_REQUIRE_DATA") and "shared_data" in getattr(item, "fixturenames", ()):
        report.outcome = "failed"
        report.longrepr = (
            f"test on the shared data skipped with STREAM_NUDGE_REQUIRE_DATA set: {report.longrepr}"
        )


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


DATA_SETS = ("scifact-minilm", "cranfield-minilm")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets' folder (``STREAM_NUDGE_DATA``; read by path, never copied)."""
    missing = [n for n in DATA_SETS if not (SHARED_DATA / n / "embeddings.npz").is_file()]
    if missing:
        pytest.skip(
            f"the shared data sets are not at {SHARED_DATA} (missing: {', '.join(missing)}); "
            "set STREAM_NUDGE_DATA to the folder that holds them"
        )
    return SHARED_DATA


POSTGRES_SCRIPT = REPO / "deploy" / "postgres" / "postgres.sh"


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """The DSN of the session's real PostgreSQL server with pgvector, started by
    ``deploy/postgres/postgres.sh`` on a free loopback port and stopped (by its PID) at the end;
    ``STREAM_NUDGE_POSTGRES_DSN`` names a server of your own instead. In CI a server that does
    not start fails the tests that need it."""
    given = os.environ.get("STREAM_NUDGE_POSTGRES_DSN")
    if given:
        yield given
        return
    import tempfile

    # Not under pytest's own temporary directory: that one is closed to other users, and the
    # server runs as one of those when the tests run as root.
    run_dir = tempfile.mkdtemp(prefix="stream-nudge-pg-")
    os.chmod(run_dir, 0o755)
    env = dict(os.environ, PG_PORT=str(_free_port()), PG_RUN_DIR=run_dir, PYTHON=sys.executable)
    proc = subprocess.run(
        [str(POSTGRES_SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        message = f"could not start PostgreSQL:\n{proc.stderr[-4000:]}"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield proc.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(POSTGRES_SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
