"""Bad input never stops the engine and never changes its state: it goes to dead letters."""

from __future__ import annotations

import base64

import orjson
import pytest
from streams import doc_message, event_message, write_jsonl
from test_engine_behaviour import toy

from stream_nudge.app import replay
from stream_nudge.config import load_config
from stream_nudge.messages import REASONS, Decoder, Record

DIM = 8
V = [0.1] * DIM

BAD_DOCS = [
    (b'{"op": "upsert", "id": "x", "embedding": [0.1,', "invalid_json"),
    (b"\xff\xfe{}", "invalid_utf8"),
    (b"[1, 2, 3]", "not_an_object"),
    (orjson.dumps({"op": "upsert", "embedding": V}), "missing_field"),
    (orjson.dumps({"op": "upsert", "id": "x"}), "missing_field"),
    (orjson.dumps({"op": "upsert", "id": 7, "embedding": V}), "wrong_type"),
    (orjson.dumps({"op": "upsert", "id": "x", "embedding": "0.1 0.2"}), "wrong_type"),
    (orjson.dumps({"op": "upsert", "id": "x", "embedding": [[0.1] * DIM]}), "wrong_type"),
    (orjson.dumps({"op": "merge", "id": "x", "embedding": V}), "unknown_op"),
    (orjson.dumps({"op": "upsert", "id": "x", "embedding_b64": "!!notbase64!!"}), "bad_base64"),
    (
        orjson.dumps(
            {"op": "upsert", "id": "x", "embedding_b64": base64.b64encode(b"abc").decode()}
        ),
        "bad_base64",
    ),
    (orjson.dumps({"op": "upsert", "id": "x", "embedding": [0.1] * (DIM + 1)}), "wrong_dimension"),
    (orjson.dumps({"op": "upsert", "id": "x", "embedding": [0.1] * 70_000}), "absurd_size"),
    (
        orjson.dumps({"op": "upsert", "id": "x", "embedding": [1e39] + [0.1] * (DIM - 1)}),
        "non_finite",
    ),
    (orjson.dumps({"op": "upsert", "id": "x", "embedding": [0.0] * DIM}), "zero_vector"),
    (b'{"op": "upsert", "id": "x", "embedding": [' + b"0.1," * 300_000 + b"0.1]}", "oversize"),
]

BAD_EVENTS = [
    (b"not json at all", "invalid_json"),
    (b'"a string"', "not_an_object"),
    (orjson.dumps({"query_embedding": V, "doc_id": "d1"}), "missing_field"),
    (orjson.dumps({"query_id": "q", "doc_id": "d1"}), "missing_field"),
    (orjson.dumps({"query_id": "q", "query_embedding": V}), "missing_field"),
    (orjson.dumps({"query_id": "q", "query_embedding": V, "doc_ids": "d1"}), "wrong_type"),
    (orjson.dumps({"query_id": "q", "query_embedding": V, "doc_ids": []}), "missing_field"),
    (
        orjson.dumps(
            {"query_id": "q", "query_embedding": V, "doc_ids": [f"d{i}" for i in range(2000)]}
        ),
        "absurd_size",
    ),
    (
        orjson.dumps({"query_id": "q", "query_embedding": V, "doc_id": "d1", "weight": "heavy"}),
        "bad_weight",
    ),
    (
        orjson.dumps({"query_id": "q", "query_embedding": V, "doc_id": "d1", "weight": 1e300}),
        "bad_weight",
    ),
    (
        orjson.dumps({"query_id": "q", "query_embedding": V, "doc_id": "d1", "split": "test"}),
        "bad_split",
    ),
    (
        orjson.dumps({"query_id": "q", "query_embedding": V, "doc_id": "d1", "ts": "yesterday"}),
        "wrong_type",
    ),
    (orjson.dumps({"query_id": "q", "query_embedding": V[:-1], "doc_id": "d1"}), "wrong_dimension"),
    (
        orjson.dumps({"query_id": "q", "query_embedding": ["0.8"] * DIM, "doc_id": "d1"}),
        "wrong_type",
    ),
    (
        orjson.dumps({"query_id": "q", "query_embedding": [True] * DIM, "doc_id": "d1"}),
        "wrong_type",
    ),
    (
        orjson.dumps({"query_id": "q", "query_embedding": V, "doc_id": "d1", "doc_ids": ["d2"]}),
        "ambiguous",
    ),
    (
        orjson.dumps(
            {"query_id": "q", "query_embedding": V, "query_embedding_b64": "AAAA", "doc_id": "d"}
        ),
        "ambiguous",
    ),
    (
        orjson.dumps({"query_id": "q", "query_embedding": [float("1e40")] * DIM, "doc_id": "d1"}),
        "non_finite",
    ),
    (b"\xc3\x28", "invalid_utf8"),
]


def test_every_reason_is_exercised():
    # The pending store's reasons are exercised in test_pending.py, strict mode's below.
    elsewhere = {"pending_overflow", "pending_expired", "pending_at_end", "unknown_field"}
    elsewhere.add("split_conflict")  # test_engine_behaviour.py
    assert {r for _, r in BAD_DOCS + BAD_EVENTS} | elsewhere == set(REASONS)


@pytest.mark.parametrize("strict", [False, True])
def test_unknown_fields_are_ignored_or_in_strict_mode_dead_letters(strict):
    typo = orjson.dumps({"query_id": "q", "query_embedding": V, "doc_id": "d1", "wieght": 5})
    doc = orjson.dumps({"id": "d1", "embedding": V, "source": "crawler"})  # no op: an upsert
    decoder = Decoder.for_config(load_config(overrides={"contract": {"strict": strict}}))
    got = decoder.decode_batch([Record("docs", doc), Record("events", typo)] * 3)
    if strict:
        assert {g.reason for g in got} == {"unknown_field"}
        assert "wieght" in got[1].detail and "source" in got[0].detail
    else:
        assert got[0].__class__.__name__ == "DocUpsert" and got[1].weight == 1.0


def interleave(good, bad):
    out = []
    for i, line in enumerate(good):
        out.append(line)
        if i < len(bad):
            out.append(bad[i][0])
    out.extend(line for line, _ in bad[len(good) :])
    return out


def test_a_corrupted_log_gives_the_clean_output_and_every_bad_line_as_a_dead_letter(tmp_path):
    doc_msgs, events = toy()
    config = load_config(
        overrides={"replay": {"batch_size": 1_000_000}, "gamma": {"every_events": 20}}
    )
    clean = replay(
        config,
        write_jsonl(tmp_path / "docs.jsonl", doc_msgs),
        write_jsonl(tmp_path / "events.jsonl", events),
        tmp_path / "clean.jsonl",
        progress=False,
    )
    assert clean.dead_letters == {}
    dirty = replay(
        config,
        write_jsonl(tmp_path / "bad-docs.jsonl", interleave(doc_msgs, BAD_DOCS)),
        write_jsonl(tmp_path / "bad-events.jsonl", interleave(events, BAD_EVENTS)),
        tmp_path / "dirty.jsonl",
        tmp_path / "dead.jsonl",
        progress=False,
    )
    assert (tmp_path / "dirty.jsonl").read_bytes() == (tmp_path / "clean.jsonl").read_bytes()
    assert dirty.gamma == clean.gamma and dirty.events == clean.events
    letters = [orjson.loads(line) for line in (tmp_path / "dead.jsonl").read_bytes().splitlines()]
    expected = [("docs", r) for _, r in BAD_DOCS] + [("events", r) for _, r in BAD_EVENTS]
    assert sorted((d["topic"], d["reason"]) for d in letters) == sorted(expected)
    for letter in letters:
        assert letter["detail"] and letter["position"]["line"] > 0
        assert "raw" in letter or "raw_b64" in letter
    oversize = next(d for d in letters if d["reason"] == "oversize")
    assert oversize["raw_truncated_at"] == 65_536
    counted = {}
    for _, r in expected:
        counted[r] = counted.get(r, 0) + 1
    assert dirty.dead_letters == counted


@pytest.mark.parametrize("line,reason", BAD_EVENTS)
def test_decoder_names_the_reason(line, reason):
    decoded = Decoder(dimension=DIM).decode(Record("events", line))
    assert decoded.reason == reason


def test_json_arrays_and_base64_decode_to_the_same_vector():
    d = Decoder()
    a = d.decode(Record("events", event_message("q", [0.5, -2.0, 3.25], "x")))
    b = d.decode(Record("events", event_message("q", [0.5, -2.0, 3.25], "x", b64=True)))
    assert a.vector.tolist() == b.vector.tolist() == [0.5, -2.0, 3.25]
    doc = d.decode(Record("docs", doc_message("x", [1.0, 2.0, 3.0], b64=True)))
    assert doc.vector.flags.owndata  # a copy, never a view of the message buffer
