"""The local cache of the changelog (stream_nudge.kafka.cache), without a broker: the cache at any
offsets at or below the commits it holds, with the log's tail from there, rebuilds the engine the
whole log does (oracle: the whole log); a cache that cannot be used says why and is not used; the
refresher writes in its thread what was committed, and a failed write is retried with the next.
"""

from __future__ import annotations

import sqlite3
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_changelog import canonical
from test_checkpoint import OVERRIDES, stream

from stream_nudge.config import load_config
from stream_nudge.engine import Engine
from stream_nudge.engine.changelog import ChangelogWriter, Record, engine_from_records
from stream_nudge.kafka.cache import CacheRefresher, LocalCache
from stream_nudge.kafka.client import TopicPartition

TOPICS = {"documents": "c-documents", "sums": "c-sums", "engine": "c-engine"}
# One partition stands for the log here: a record's offset is its place in the list.
TP = TopicPartition("c-engine", 0)
DAY = 86_400.0


def commits(batch: int = 5):
    """The changelog of a stream committed every ``batch`` messages: the records of each commit,
    and the engine at the end."""
    config = load_config(overrides=OVERRIDES)
    engine = Engine(config)
    writer = ChangelogWriter(engine, fresh=True)
    recs = stream()
    out = []
    for i in range(0, len(recs), batch):
        engine.process(recs[i : i + batch])
        out.append(writer.records())
    return config, out, engine


CONFIG, COMMITS, FINAL = commits()


def log_of(commit_list) -> list[Record]:
    return [r for c in commit_list for r in c]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_cache_plus_tail_from_any_safe_offset_is_the_whole_log(tmp_path_factory, data):
    """The refresher's offsets are read after a commit and may be lower than the end of what
    the cache holds (a commit marker not yet written, replication behind): any offset from the
    start of the log to the end of the cached commits must give the same engine."""
    log = log_of(COMMITS)
    cut = data.draw(st.integers(0, len(COMMITS)), label="commits in the cache")
    cached_end = len(log_of(COMMITS[:cut]))
    start = data.draw(st.integers(0, cached_end), label="offset the cache says")
    cache = LocalCache(tmp_path_factory.mktemp("cache"), TOPICS, max_age_s=DAY)
    # Written as the refresher does, in two refreshes, compacted each.
    half = data.draw(st.integers(0, cut), label="first refresh")
    first = compact_records(log_of(COMMITS[:half]))
    cache.write(first, {TP: min(start, len(log_of(COMMITS[:half])))})
    cache.write(compact_records(log_of(COMMITS[half:cut])), {TP: start})
    loaded = cache.load({TP: len(log)})
    assert loaded is not None
    stores, starts = loaded
    assert starts == {TP: start}
    rebuilt = engine_from_records(CONFIG, log[start:], base=stores)
    assert canonical(rebuilt) == canonical(FINAL)


def compact_records(records: list[Record]) -> list[Record]:
    """One record per key, the last (a tombstone where the key was deleted), as the refresher
    hands them over."""
    last = {}
    for r in records:
        last[(r.store, r.key)] = r.value
    return [Record(store, key, value) for (store, key), value in last.items()]


def test_a_deletion_in_a_later_refresh_removes_the_key(tmp_path):
    cache = LocalCache(tmp_path, TOPICS, max_age_s=DAY)
    cache.write([Record("documents", b"a", b"1"), Record("documents", b"b", b"2")], {TP: 2})
    cache.write([Record("documents", b"a", None), Record("sums", b"b", b"3")], {TP: 4})
    stores, starts = cache.load({TP: 4})
    assert stores["documents"] == {b"b": b"2"}
    assert stores["sums"] == {b"b": b"3"}
    assert starts == {TP: 4}


def test_partitions_the_cache_does_not_know_are_read_from_their_beginning(tmp_path):
    cache = LocalCache(tmp_path, TOPICS, max_age_s=DAY)
    cache.write([], {TP: 3})
    other = TopicPartition("c-sums", 1)
    assert cache.load({TP: 5, other: 7})[1] == {TP: 3, other: 0}


@pytest.mark.parametrize(
    "case, reason",
    [
        ("missing", None),
        ("other topics", "it caches the changelog"),
        ("too old", "longer than the changelog keeps tombstones"),
        ("beyond the end", "beyond its end 5 (the topic was deleted and created again?)"),
        ("not a database", "cannot be read"),
        ("other format", "format '0'"),
    ],
)
def test_a_cache_that_cannot_be_used_says_why_and_is_not_used(tmp_path, caplog, case, reason):
    cache = LocalCache(tmp_path, TOPICS, max_age_s=DAY)
    if case != "missing":
        cache.write([Record("documents", b"a", b"1")], {TP: 9 if case == "beyond the end" else 2})
    if case == "other topics":
        cache = LocalCache(tmp_path, {**TOPICS, "sums": "elsewhere-sums"}, max_age_s=DAY)
    elif case == "too old":
        cache = LocalCache(tmp_path, TOPICS, max_age_s=0.0)
        time.sleep(0.01)
    elif case == "not a database":
        cache.clear()
        cache.path.write_bytes(b"this is not SQLite" * 100)
    elif case == "other format":
        with sqlite3.connect(cache.path) as db:
            db.execute("UPDATE meta SET value = '0' WHERE name = 'format'")
    with caplog.at_level("INFO"):
        assert cache.load({TP: 5}) is None
    text = caplog.text
    assert (
        ("no local cache" in text)
        if reason is None
        else (reason in text and str(cache.path) in text)
    )


def test_the_refresher_writes_what_was_committed_in_its_thread_and_retries_a_failed_write(tmp_path):
    cache = LocalCache(tmp_path, TOPICS, max_age_s=DAY)
    written = []
    refresher = CacheRefresher(cache, interval_s=0.0, on_written=lambda s, n: written.append(n))
    refresher.add([Record("documents", b"a", b"1"), Record("documents", b"a", b"2")])
    refresher.refresh({TP: 2})
    refresher.close()
    assert written == [1]  # one record per key
    assert cache.load({TP: 2})[0]["documents"] == {b"a": b"2"}

    # A write that fails (the directory is gone) leaves the cache as it was; its batch is
    # written with the next refresh, under what came after it.
    refresher.add([Record("documents", b"b", b"3"), Record("documents", b"c", b"4")])
    saved = cache.path
    cache.path = tmp_path / "gone" / "cache.sqlite"
    refresher.refresh({TP: 4})
    refresher.close()
    assert refresher.failed is not None and written == [1]
    cache.path = saved
    refresher.add([Record("documents", b"c", b"5")])
    refresher.refresh({TP: 5})
    refresher.close()
    assert refresher.failed is None
    stores, starts = cache.load({TP: 5})
    assert stores["documents"] == {b"a": b"2", b"b": b"3", b"c": b"5"}
    assert starts == {TP: 5}


def test_a_refresh_is_due_by_its_interval_and_never_while_a_write_runs(tmp_path):
    import threading

    cache = LocalCache(tmp_path, TOPICS, max_age_s=DAY)
    refresher = CacheRefresher(cache, interval_s=60.0)
    now = time.monotonic()
    assert not refresher.due(now) and refresher.due(now + 61)
    release, write = threading.Event(), cache.write
    cache.write = lambda records, offsets: release.wait(10) and write(records, offsets)
    refresher.add([Record("documents", b"a", b"1")])
    refresher.refresh({TP: 1})
    assert refresher.busy and not refresher.due(now + 1000)
    refresher.add([Record("documents", b"b", b"2")])
    refresher.refresh({TP: 2})  # while the write runs: nothing, b waits for the next one
    release.set()
    refresher.close()
    assert not refresher.busy and refresher.due(now + 1000)
    stores, starts = cache.load({TP: 2})
    assert stores["documents"] == {b"a": b"1"} and starts == {TP: 1}
    refresher.refresh({TP: 2})
    refresher.close()
    assert cache.load({TP: 2})[0]["documents"] == {b"a": b"1", b"b": b"2"}
