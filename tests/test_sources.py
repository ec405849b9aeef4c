"""The JSONL source against a line-by-line reading of the same files, whatever the chunking."""

from __future__ import annotations

from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import examples

from stream_nudge.sources import JsonlSource

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LIMIT = 12

# Lines as a log may hold them: records, blank or whitespace-only lines, CRLF endings, and lines
# over the limit (plain bytes, so that where the cut falls does not matter).
lines = st.one_of(
    st.binary(min_size=1, max_size=LIMIT).map(lambda b: b.replace(b"\n", b"x")),
    st.sampled_from([b"", b" ", b"\t", b"\x0b\x0c", b"\r", b'{"a": 1}\r', b" {}", b"\x1c"]),
    st.integers(LIMIT + 1, 4 * LIMIT).map(lambda n: b"o" * n),
)


def expected_records(path, topic):
    """One record per non-blank line, numbered from 1: CR stripped, overlong lines cut."""
    out = []
    for number, line in enumerate(path.read_bytes().split(b"\n"), 1):
        if len(line) > LIMIT:
            out.append((topic, line[: LIMIT + 1], number))
        elif line.strip():
            out.append((topic, line.rstrip(b"\r"), number))
    return out


@SETTINGS
@given(
    st.lists(lines, max_size=25),
    st.lists(lines, max_size=25),
    st.booleans(),
    st.integers(1, 40),
    st.integers(1, 9),
)
def test_records_match_a_line_by_line_reading(
    tmp_path_factory, docs, events, final_newline, chunk_bytes, batch_size
):
    folder = tmp_path_factory.mktemp("logs")
    end = b"\n" if final_newline else b""
    (folder / "docs.jsonl").write_bytes(b"\n".join(docs) + end)
    (folder / "events.jsonl").write_bytes(b"\n".join(events) + end)
    source = JsonlSource(
        folder / "docs.jsonl", folder / "events.jsonl", LIMIT, chunk_bytes=chunk_bytes
    )
    got = []
    while (batch := source.next_batch(batch_size)) is not None:
        assert 0 < len(batch) <= batch_size
        got.extend(batch)
        # The position is at or after the last record returned (it may be in the next file).
        position, last = source.position(), batch[-1].position
        if Path(position["file"]).name == last["file"]:
            assert position["line"] >= last["line"]
    source.close()
    want = expected_records(folder / "docs.jsonl", "docs") + expected_records(
        folder / "events.jsonl", "events"
    )
    assert [(r.topic, r.value, r.position["line"]) for r in got] == want
    assert {r.position["file"] for r in got} <= {"docs.jsonl", "events.jsonl"}
    assert source.bytes_read == source.bytes_total


@settings(max_examples=examples(40), deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.integers(0, 20)), max_size=30),
    st.lists(st.one_of(st.none(), st.integers(0, 20)), max_size=30),
    st.integers(1, 7),
)
def test_time_order_merges_both_logs_by_ts_keeping_each_files_order(
    tmp_path_factory, docs_ts, events_ts, batch
):
    from stream_nudge.sources import TimeOrderedSource

    tmp = tmp_path_factory.mktemp("logs")

    def lines(prefix, times):
        out = []
        for n, ts in enumerate(times):
            body = {"id": f"{prefix}{n}"} if ts is None else {"id": f"{prefix}{n}", "ts": ts}
            out.append(orjson.dumps(body))
        return out

    (tmp / "d.jsonl").write_bytes(b"".join(x + b"\n" for x in lines("d", docs_ts)))
    (tmp / "e.jsonl").write_bytes(b"".join(x + b"\n" for x in lines("e", events_ts)))
    source = TimeOrderedSource(tmp / "d.jsonl", tmp / "e.jsonl")
    got = []
    while (records := source.next_batch(batch)) is not None:
        got.extend(orjson.loads(r.value)["id"] for r in records)
    source.close()

    # Oracle: each line's time is the latest ts so far in its file; a stable sort by (time,
    # documents first) of the two files' lines in file order.
    def timed(prefix, times, rank):
        clock, out = float("-inf"), []
        for n, ts in enumerate(times):
            clock = max(clock, ts) if ts is not None else clock
            out.append((clock, rank, f"{prefix}{n}"))
        return out

    expected = [
        x[2] for x in sorted(timed("d", docs_ts, 0) + timed("e", events_ts, 1), key=lambda x: x[:2])
    ]
    assert got == expected
