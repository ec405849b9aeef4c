"""Decoding a batch gives exactly what decoding its records one by one gives, good or bad."""

from __future__ import annotations

import base64
import struct

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import examples

from stream_nudge import messages
from stream_nudge.messages import DeadLetter, Decoder, Record

SETTINGS = settings(
    max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def b64(values) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


@st.composite
def vectors(draw, dim: int):
    """A vector field's name suffix and value: mostly right, sometimes wrong in every way."""
    numbers = st.floats(-1e3, 1e3, allow_nan=False, width=32) | st.integers(-5, 5)
    values = draw(st.lists(numbers, min_size=dim, max_size=dim))
    kind = draw(
        st.sampled_from(
            ["json"] * 6
            + ["b64"] * 6
            + [
                "nan",
                "inf",
                "huge",
                "zero",
                "short",
                "long",
                "nested",
                "text",
                "bools",
                "null_inside",
                "b64_bad_char",
                "b64_padding",
                "b64_short",
                "b64_non_ascii",
                "not_a_list",
                "null",
                "number_texts",
                "number_texts",
                "scalar",
                "b64_byte_long",
                "b64_byte_short",
            ]
        )
    )
    if kind == "json":
        return "", values
    if kind == "number_texts":  # spelled as orjson never writes them; see records()
        return "", "@numbers@"
    if kind == "scalar":
        return "", draw(st.sampled_from([5, 1.5, True]))
    if kind in ("b64_byte_long", "b64_byte_short"):  # a byte too many or too few
        raw = np.asarray(values, dtype="<f4").tobytes()
        raw = raw + b"\x00" if kind == "b64_byte_long" else raw[:-1]
        return "_b64", base64.b64encode(raw).decode()
    if kind == "b64":
        return "_b64", b64(values)
    if kind == "nan":
        return "", [*values[:-1], float("nan")]
    if kind == "inf":
        return "_b64", b64([*values[:-1], np.inf])
    if kind == "huge":
        return "", [*values[:-1], 1e39]
    if kind == "zero":
        return draw(st.sampled_from(["", "_b64"])), [0.0] * dim if draw(st.booleans()) else b64(
            [0.0] * dim
        )
    if kind == "short":
        return "", values[:-1]
    if kind == "long":
        return "_b64", b64([*values, 1.0])
    if kind == "nested":
        return "", [[v] for v in values]
    if kind == "text":
        return "", [*values[:-1], "1.5" if draw(st.booleans()) else "x"]
    if kind == "bools":
        return "", [True] * dim
    if kind == "null_inside":
        return "", [None, *values[1:]]
    text = b64(values)
    if kind == "b64_bad_char":
        return "_b64", "!" + text[1:]
    if kind == "b64_padding":
        return "_b64", text[:-4] + "AA=="
    if kind == "b64_short":
        return "_b64", text[:-4]
    if kind == "b64_non_ascii":
        return "_b64", "é" + text[1:]
    if kind == "not_a_list":
        return "", {"v": values}
    return "", None


def mostly(good, bad):
    """Good values most of the time, each kind of bad one now and then."""
    return st.sampled_from(good * (2 * len(bad) + 1) + bad)


@st.composite
def records(draw, dim: int):
    topic = draw(st.sampled_from(["docs", "events"]))
    suffix, vector = draw(vectors(dim))
    if topic == "docs":
        body = {
            "op": draw(mostly(["upsert"], ["delete", "merge", 3])),
            "id": draw(mostly(["d1", "d2"], ["", 7, None])),
            "embedding" + suffix: vector,
        }
        if draw(st.integers(0, 9)) == 0:
            del body["op"]  # upsert by default
    else:
        body = {
            "query_id": draw(mostly(["q1", "q2"], ["", 3])),
            "query_embedding" + suffix: vector,
        }
        ids = draw(mostly(["one"], ["list", "empty", "bad", "both", "none"]))
        if ids in ("one", "both"):
            body["doc_id"] = "d1"
        if ids in ("list", "both"):
            body["doc_ids"] = ["d1", "d2", "d1"]
        if ids == "empty":
            body["doc_ids"] = []
        if ids == "bad":
            body["doc_id"] = 5
        for key, good, bad in (
            ("weight", [1, 2.5, -1.0, 0], [True, "1", 1e300, -1e300]),
            ("split", ["train", "validation", None], ["test", 1]),
            ("ts", [1.5, 17, None], [True, "now", [1]]),
        ):
            if draw(st.booleans()):
                body[key] = draw(mostly(good, bad))
    if draw(st.integers(0, 9)) == 0:  # a field the contract does not name (strict refuses it)
        body[draw(st.sampled_from(["wieght", "source", "doc"]))] = 1
    if draw(st.integers(0, 19)) == 0:  # the vector twice, as JSON and as base64: ambiguous
        name = "embedding" if topic == "docs" else "query_embedding"
        body[name] = [0.5] * dim
        body[name + "_b64"] = b64([0.5] * dim)
    line = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if b'"@numbers@"' in line:
        spellings = st.sampled_from(
            ["1E5", "-0", "-0.0", "1e-400", "1e400", "2.5e-45", "3.4028235677973366e38", "1e39"]
            + ["0.1000000000000000055511151231257827", "7", "1.", "01", ".5", "+1", "NaN"]
            # Integers beyond float64's: rounded via float64 (as numpy converts Python ints),
            # beyond 64 bits, the most negative int64.
            + [str(2**60 + 2**36 + 1), str(2**64 + 7), str(-(2**63)), "123456789012345678901234"]
        )
        spelled = draw(st.lists(spellings, min_size=dim, max_size=dim))
        line = line.replace(b'"@numbers@"', ("[" + ",".join(spelled) + "]").encode())
    mangle = draw(
        mostly(
            ["none"],
            ["cut", "latin1", "array", "null", "oversize", "bom", "repeated", "escaped", "bracket"],
        )
    )
    if mangle == "cut":
        line = line[: len(line) // 2]
    elif mangle == "latin1":
        line = b"\xff" + line
    elif mangle == "array":
        line = b"[" + line + b"]"
    elif mangle == "null":
        line = None
    elif mangle == "oversize":
        line = line + b" " * 600
    elif mangle == "bom":
        line = b"\xef\xbb\xbf" + line
    elif mangle == "repeated" and line[:1] == b"{":  # orjson keeps the last of repeated keys
        first = b'"id":"d9",' if topic == "docs" else b'"query_id":"q9","doc_id":"d9",'
        line = b"{" + first + line[1:]
    elif mangle == "escaped":  # keys and strings with escapes
        line = line.replace(b'"query_id"', b'"query\\u005fid"').replace(b'"d1"', b'"\\u00e9\\/"')
    elif mangle == "bracket":  # a bracket inside a string
        line = line.replace(b'"q1"', b'"q[1]"')
    return Record(topic, line, position=draw(st.integers(0, 10**6)))


def same(a, b) -> bool:
    if a.__class__ is not b.__class__:
        return False
    if isinstance(a, DeadLetter):
        return (a.reason, a.detail, a.record) == (b.reason, b.detail, b.record)
    for name in a.__slots__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
                return False
        elif x != y or x.__class__ is not y.__class__:
            return False
    return True


@SETTINGS
@given(st.data(), st.sampled_from([1, 2, 3, 4, 5, 6, 8]), st.booleans(), st.booleans())
def test_a_batch_decodes_as_its_records_one_by_one(data, dim, known, strict):
    batch = data.draw(st.lists(records(dim), min_size=2, max_size=150))
    limits = {"max_message_bytes": 500, "max_dimension": 64, "strict": strict}
    start = dim if known else None
    one_by_one = Decoder(start, **limits)
    expected = [one_by_one.decode(r) for r in batch]
    decoder = Decoder(start, **limits)
    got = decoder.decode_batch(batch)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert same(g, e), (g, e)
    assert decoder.dimension == one_by_one.dimension


def test_the_batch_path_is_taken_and_its_vectors_are_exact():
    dim = 384
    rng = np.random.default_rng(0)
    values = rng.normal(size=(200, dim)).astype(np.float32)
    batch = [
        Record(
            "events",
            orjson.dumps(
                {"query_id": f"q{i}", "doc_id": "d", "query_embedding": v.tolist()}
                if i % 2
                else {"query_id": f"q{i}", "doc_id": "d", "query_embedding_b64": b64(v)}
            ),
        )
        for i, v in enumerate(values)
    ]
    # A NaN in the middle of a batch spoils only its own record.
    batch[77] = Record("events", batch[77].value.replace(b'"doc_id"', b'"ts":1,"doc_id"'))
    bad = values[90].copy()
    bad[5] = np.nan
    batch[90] = Record(
        "events", orjson.dumps({"query_id": "q", "doc_id": "d", "query_embedding_b64": b64(bad)})
    )
    got = Decoder(dim).decode_batch(batch)
    assert isinstance(got[90], DeadLetter) and got[90].reason == "non_finite"
    assert got[77].ts == 1.0 and got[77].ts.__class__ is float
    for i, item in enumerate(got):
        if i != 90:
            assert item.vector.tobytes() == values[i].tobytes()
            assert item.vector.dtype == np.float32 and item.vector.shape == (dim,)
    # Rows of one array per group, never views of a message's buffer.
    assert got[2].vector.base is not None and got[2].vector.base is got[4].vector.base
    assert struct.unpack("<f", got[3].vector[:1].tobytes())[0] == values[3][0]


@pytest.mark.parametrize(
    "fields,reason",
    [
        ({"doc_id": "d", "query_embedding": [[1.0], [2.0], [3.0]]}, "wrong_type"),
        ({"doc_id": "d", "doc_ids": ["e", "f"]}, "ambiguous"),
        ({"doc_id": "d", "query_embedding_b64": "AACAPwAAAEAAAEBA"}, "ambiguous"),
        ({"doc_id": "d", "query_embedding": ["1.0", 2.0, 3.0]}, "wrong_type"),
        ({"doc_id": "d", "query_embedding": [True, 2.0, 3.0]}, "wrong_type"),
        ({"doc_id": "d", "weight": True}, "bad_weight"),
        ({"doc_id": "d", "weight": -1e7}, "bad_weight"),
        ({"doc_id": "d", "ts": False}, "wrong_type"),
        ({"doc_id": "d", "split": "test"}, "bad_split"),
        ({"doc_id": "d", "weight": 2, "ts": 3}, None),
    ],
)
def test_fields_a_batch_could_take_for_good_decode_as_alone(fields, reason):
    """Each case among good records, so that the batch path sees it (a nested array alone in its
    group converts without error, to three dimensions)."""
    v = [1.0, 2.0, 3.0]

    def event(**fields):
        return Record("events", orjson.dumps({"query_id": "q", "query_embedding": v, **fields}))

    nested = "query_embedding" in fields and isinstance(fields["query_embedding"][0], list)
    if nested:  # the good records' vectors in base64, so that the nested one is alone
        good = Record(
            "events",
            orjson.dumps({"query_id": "q", "doc_id": "d", "query_embedding_b64": b64(v)}),
        )
    else:
        good = event(doc_id="d")
    batch = [good, event(**fields), good]
    got = Decoder(3).decode_batch(batch)
    assert getattr(got[1], "reason", None) == reason
    assert same(got[1], Decoder(3).decode(batch[1]))
    assert not isinstance(got[0], DeadLetter) and not isinstance(got[2], DeadLetter)


B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@SETTINGS
@given(
    st.binary(max_size=60).map(lambda b: base64.b64encode(b).decode())
    | st.text(alphabet=B64_ALPHABET + "=!é \n-_", max_size=40),
    st.data(),
)
def test_batch_base64_decoders_answer_as_binascii_strict(text, data):
    """The batch path's base64 decoders (pybase64) never accept a text strict binascii refuses,
    and give its bytes. The unpadded one answers exactly where strict binascii accepts a text
    without padding; anything else (padding, other characters, a length that is not a multiple
    of 4, non-ASCII) it refuses, for the one-by-one path to name. The general one may refuse a
    text binascii takes that has padding after complete groups of four (the one-by-one path then
    decodes it), nothing else."""
    import binascii

    from stream_nudge.messages import _fast_b64decode, _strict_b64decode, _unpadded_b64decode

    if text and data.draw(st.booleans()):  # one character swapped for any other
        at = data.draw(st.integers(0, len(text) - 1))
        text = text[:at] + data.draw(st.characters(max_codepoint=0x2FF)) + text[at + 1 :]
    try:
        expected = _strict_b64decode(text)
    except (binascii.Error, ValueError):
        expected = None
    unpadded, fast = _unpadded_b64decode(text), _fast_b64decode(text)
    assert unpadded == (None if "=" in text else expected)
    # Where pybase64 refuses what binascii takes, the text is padding after complete groups.
    assert fast == expected or (
        fast is None and text.endswith("=") and len(text.rstrip("=")) % 4 == 0
    )


@pytest.mark.parametrize("vectors", ["json", "base64"])
def test_plain_records_never_take_the_one_by_one_path(vectors, monkeypatch):
    """Plain upserts and single-document events are decoded a batch at a time (by simdjson for
    JSON arrays), and the parser takes every next record: none goes the slow way."""
    rng = np.random.default_rng(1)
    dim = 384
    field = (lambda v: v.tolist()) if vectors == "json" else b64
    suffix = "" if vectors == "json" else "_b64"
    batch = [
        Record("docs", orjson.dumps({"id": f"d{i}", "embedding" + suffix: field(v)}))
        for i, v in enumerate(rng.normal(size=(150, dim)).astype(np.float32))
    ] + [
        Record(
            "events",
            orjson.dumps(
                {"query_id": f"q{i}", "doc_id": "d1", "weight": 2, "split": "train", "ts": 1.5}
                | {"query_embedding" + suffix: field(v)}
            ),
        )
        for i, v in enumerate(rng.normal(size=(150, dim)).astype(np.float32))
    ]
    decoder = Decoder(dim)
    slow, parsed = [], []
    monkeypatch.setattr(decoder, "decode_one", lambda *args: slow.append(args))
    loads = orjson.loads
    monkeypatch.setattr(messages.orjson, "loads", lambda v: parsed.append(v) or loads(v))
    got = decoder.decode_batch(batch)
    monkeypatch.undo()
    assert slow == []
    assert len(parsed) == (0 if vectors == "json" else len(batch))  # JSON arrays: simdjson
    reference = Decoder(dim)
    for g, record in zip(got, batch, strict=True):
        assert same(g, reference.decode(record))


def test_other_byte_types_decode_as_bytes():
    """A record value that is a bytearray or memoryview (not what the sources make, but a buffer
    all the same) decodes as the same bytes do."""
    line = b'{"query_id":"q","doc_id":"d","query_embedding":[1,2,3]}'
    reference = Decoder(3).decode(Record("events", line))
    for value in (bytearray(line), memoryview(line)):
        got = Decoder(3).decode_batch([Record("events", value), Record("events", line)])
        assert same(got[1], reference)
        assert isinstance(got[0], type(reference)) and got[0].vector.tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("dim", [2, 5, 128])
def test_base64_a_byte_long_and_a_byte_short_do_not_cancel_out(dim):
    """Padded base64 (4 * dim not a multiple of 3): a vector one byte too long and one a byte
    too short in the same batch are each rejected, and the good one between them is intact."""
    raw = np.arange(dim, dtype="<f4").tobytes()
    long_, short = raw + b"\x00", raw[:-1]
    batch = [
        Record("events", orjson.dumps({"query_id": "q", "doc_id": "d"} | {f: t}))
        for f, t in [
            ("query_embedding_b64", base64.b64encode(long_).decode()),
            ("query_embedding_b64", b64(np.arange(dim))),
            ("query_embedding_b64", base64.b64encode(short).decode()),
        ]
    ]
    got = Decoder(dim).decode_batch(batch)
    assert [getattr(g, "reason", None) for g in got] == ["bad_base64", None, "bad_base64"]
    assert got[1].vector.tolist() == list(range(dim))
