"""When an exactly-once commit is due (stream_nudge.kafka.committer.CommitSchedule), against the
rule written out: records or the interval under load; the caught-up interval once the input is
caught up and something is uncommitted."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream_nudge.kafka.committer import CommitSchedule


def test_under_load_commits_follow_the_interval_or_the_records():
    s = CommitSchedule(interval_s=1.0, max_records=100, caught_up_s=0.2)
    s.committed(0.0)  # the clock from 0, so that the times below are exact
    t0 = 0.0
    s.count(60, caught_up=False)
    assert not s.due(t0 + 0.5)  # behind the input: no early commit
    assert s.due(t0 + 1.0)
    s.count(40, caught_up=False)
    assert s.due(t0 + 0.01)  # 100 records
    s.committed(t0 + 0.01)
    assert not s.due(t0 + 0.5) and s.due(t0 + 1.01)  # nothing new: only the interval


def test_once_caught_up_what_was_done_is_committed_after_the_short_interval():
    s = CommitSchedule(interval_s=1.0, max_records=100, caught_up_s=0.2)
    s.committed(0.0)  # the clock from 0, so that the times below are exact
    t0 = 0.0
    s.count(5, caught_up=True)
    assert not s.due(t0 + 0.1) and s.due(t0 + 0.2)
    s.committed(t0 + 0.2)
    s.count(0, caught_up=True)  # an empty poll: nothing to commit early
    assert not s.due(t0 + 0.5)
    off = CommitSchedule(interval_s=1.0, max_records=100, caught_up_s=0.0)
    off.committed(0.0)
    off.count(5, caught_up=True)
    assert not off.due(0.9) and off.due(1.0)


@given(
    interval=st.floats(0.01, 10),
    caught_up_s=st.floats(0, 10),
    records=st.integers(0, 200),
    max_records=st.integers(1, 200),
    caught_up=st.booleans(),
    since=st.floats(0, 20),
)
def test_due_is_the_rule(interval, caught_up_s, records, max_records, caught_up, since):
    s = CommitSchedule(interval, max_records, caught_up_s)
    s.committed(0.0)
    s.count(records, caught_up)
    expected = (
        records >= max_records
        or since >= interval
        or (caught_up and records > 0 and 0 < caught_up_s <= since)
    )
    assert s.due(since) == expected
