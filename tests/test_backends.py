"""The search backends against real servers: PostgreSQL with pgvector (started by
deploy/postgres/postgres.sh) and LanceDB in a temporary directory.

The oracle: a backend holds, for each id, the change with the highest generation, as a row
exactly when that change is not a deletion, whatever the order, the duplicates and the batches
the changes came in.
"""

from __future__ import annotations

import itertools
import uuid

import numpy as np
import pytest
from backend_helpers import assert_content, lance_content, pg_content
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_nudge.backends import BackendError, open_backend
from stream_nudge.backends.updates import Change, decode_update, net_changes
from stream_nudge.messages import DeadLetter, Record

DIM = 5


def vector_of(doc_id: str, generation: int) -> np.ndarray:
    """A vector that only (id, generation) decides: duplicates carry the same one."""
    rng = np.random.default_rng(abs(hash((doc_id, generation))) % 2**32)
    return rng.standard_normal(DIM).astype(np.float32)


def oracle(changes: list[Change]) -> dict[str, tuple[int, np.ndarray]]:
    best: dict[str, Change] = {}
    for c in changes:
        if c.id not in best or c.generation > best[c.id].generation:
            best[c.id] = c
    return {i: (c.generation, c.vector) for i, c in best.items() if c.vector is not None}


changes_strategy = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d'quote", "e"]),
        st.integers(1, 30),
        st.booleans(),  # a deletion
    ),
    min_size=1,
    max_size=40,
)


def to_changes(raw) -> list[Change]:
    # One kind of change per (id, generation): the engine never gives one generation twice.
    kind = {}
    for doc_id, generation, deleted in raw:
        kind.setdefault((doc_id, generation), deleted)
    return [Change(i, g, None if kind[(i, g)] else vector_of(i, g), "cosine") for i, g, _ in raw]


def apply_in_batches(backend, changes: list[Change], cuts: list[int]) -> None:
    bounds = sorted({0, len(changes), *(c % (len(changes) + 1) for c in cuts)})
    for n, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        backend.write(net_changes(changes[lo:hi]), {("updates", 0): hi, ("updates", 1): n})


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=changes_strategy, cuts=st.lists(st.integers(0, 40), max_size=40), data=st.data())
def test_postgres_holds_the_highest_generation_of_each_id_whatever_the_order(
    postgres_dsn, raw, cuts, data
):
    changes = to_changes(raw)
    order = data.draw(st.permutations(changes))
    table = f"t_{uuid.uuid4().hex[:10]}"
    backend = open_backend(postgres_dsn, table, create=True)
    backend.open()
    try:
        apply_in_batches(backend, list(order), cuts)
        assert_content(pg_content(postgres_dsn, table), oracle(changes))
        # Everything again, one change per batch, in the original order: a replay moves nothing.
        apply_in_batches(backend, changes, list(range(len(changes))))
        assert_content(pg_content(postgres_dsn, table), oracle(changes))
        assert backend.offsets()[("updates", 0)] == len(changes)
    finally:
        backend.close()


@settings(max_examples=25, deadline=None)
@given(raw=changes_strategy, cuts=st.lists(st.integers(0, 40), max_size=40), data=st.data())
def test_lancedb_holds_the_highest_generation_of_each_id_whatever_the_order(
    tmp_path_factory, raw, cuts, data
):
    changes = to_changes(raw)
    order = data.draw(st.permutations(changes))
    path = tmp_path_factory.mktemp("lance")
    backend = open_backend(f"lancedb://{path}?table=emb", create=True)
    backend.open()
    apply_in_batches(backend, list(order), cuts)
    assert_content(lance_content(path, "emb"), oracle(changes))
    # Everything again, one change per batch, in the original order: a replay moves nothing.
    apply_in_batches(backend, changes, list(range(len(changes))))
    assert_content(lance_content(path, "emb"), oracle(changes))
    assert backend.offsets()[("updates", 0)] == len(changes)


def test_a_deletion_without_a_generation_deletes_what_is_there(postgres_dsn, tmp_path):
    for url in (postgres_dsn, f"lancedb://{tmp_path}"):
        table = f"t_{uuid.uuid4().hex[:10]}"
        backend = open_backend(url, table, create=True)
        backend.open()
        backend.write(
            net_changes([Change("x", 5, vector_of("x", 5)), Change("y", 2, vector_of("y", 2))]), {}
        )
        backend.write(net_changes([Change("x", None, None)]), {})
        assert backend.rows() == 1
        # No mark: a later update of x comes back.
        backend.write(net_changes([Change("x", 3, vector_of("x", 3))]), {})
        assert backend.rows() == 2
        backend.close()


def test_postgres_creates_the_table_with_an_hnsw_index_for_the_similarity(postgres_dsn):
    import psycopg

    for similarity, ops in (("cosine", "vector_cosine_ops"), ("dot", "vector_ip_ops")):
        table = f"t_{uuid.uuid4().hex[:10]}"
        backend = open_backend(postgres_dsn, table, create=True)
        backend.open()
        backend.write(net_changes([Change("a", 1, vector_of("a", 1), similarity)]), {})
        assert not backend._has_vector_index()  # not before the first catch-up
        backend.caught_up()
        backend.close()
        with psycopg.connect(postgres_dsn) as conn:
            (definition,) = conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE tablename = %s AND indexdef LIKE %s",
                (table, "%hnsw%"),
            ).fetchone()
            kind = conn.execute(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = to_regclass(%s) AND attname = 'embedding'",
                (table,),
            ).fetchone()[0]
        assert ops in definition
        assert kind == f"vector({DIM})"


def test_postgres_builds_no_index_when_told_not_to(postgres_dsn):
    backend = open_backend(postgres_dsn, f"t_{uuid.uuid4().hex[:10]}", create=True, index=False)
    backend.open()
    backend.write(net_changes([Change("a", 1, vector_of("a", 1))]), {})
    backend.caught_up()
    assert not backend._has_vector_index() and backend.rows() == 1
    backend.close()


def test_postgres_refuses_a_table_of_another_dimension_naming_both(postgres_dsn):
    table = f"t_{uuid.uuid4().hex[:10]}"
    backend = open_backend(postgres_dsn, table, create=True)
    backend.open()
    backend.write(net_changes([Change("a", 1, vector_of("a", 1))]), {})
    backend.close()
    other = open_backend(postgres_dsn, table, dimension=DIM + 3)
    with pytest.raises(BackendError, match=rf"{table} holds vector\({DIM}\).*{DIM + 3}-d"):
        other.open()


def test_postgres_without_create_names_the_missing_table_and_the_flag(postgres_dsn):
    backend = open_backend(postgres_dsn, "nowhere_to_be_found")
    with pytest.raises(BackendError, match=r"nowhere_to_be_found does not exist.*--create"):
        backend.open()


def test_a_database_or_role_that_does_not_exist_fails_at_once(postgres_dsn):
    from stream_nudge.backends import BackendUnavailable

    base = postgres_dsn.rsplit("/", 1)[0]
    for dsn, what in (
        (base + "/no_such_db", "no_such_db"),
        (base.replace("postgres@", "nobody@") + "/postgres", "nobody"),
    ):
        with pytest.raises(BackendError, match=what) as info:
            open_backend(dsn, "t").open()
        # Not "unavailable": waiting would not help, the sink stops with the message.
        assert not isinstance(info.value, BackendUnavailable)


def test_a_wrong_dsn_names_the_server_and_what_to_check(postgres_dsn):
    from stream_nudge.backends import BackendUnavailable

    port = int(postgres_dsn.rsplit(":", 1)[1].split("/")[0])
    bad = f"postgresql://postgres:secret@127.0.0.1:{port + 1}/postgres"
    backend = open_backend(bad, "t")
    with pytest.raises(BackendUnavailable, match=r"cannot connect.*check sink\.to") as info:
        backend.open()
    assert "secret" not in str(info.value)


def test_a_database_without_the_extension_says_how_to_enable_it(postgres_dsn):
    import psycopg

    name = f"db_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = postgres_dsn.rsplit("/", 1)[0] + f"/{name}"
    with pytest.raises(BackendError, match=r"CREATE EXTENSION vector.*--create"):
        open_backend(dsn, "t").open()
    backend = open_backend(dsn, "t", create=True)
    backend.open()  # --create enables it
    backend.close()


def test_the_dsn_may_name_the_table():
    backend = open_backend("postgresql://u@h:1/db?table=docs_emb&sslmode=disable")
    assert backend.table == "docs_emb"
    assert backend.dsn == "postgresql://u@h:1/db?sslmode=disable"
    with pytest.raises(BackendError, match="not a backend URL"):
        open_backend("mysql://h/db")
    with pytest.raises(BackendError, match=r"sink\.table"):
        open_backend("postgresql://h/db", "bad name; drop table x")


def test_lancedb_refuses_another_dimension(tmp_path):
    backend = open_backend(f"lancedb://{tmp_path}?table=emb", create=True)
    backend.open()
    backend.write(net_changes([Change("a", 1, vector_of("a", 1))]), {})
    with pytest.raises(BackendError, match=f"holds {DIM}-d vectors.*{DIM + 1}-d"):
        open_backend(f"lancedb://{tmp_path}?table=emb", dimension=DIM + 1).open()
    with pytest.raises(BackendError, match=r"does not exist.*--create"):
        open_backend(f"lancedb://{tmp_path}?table=other").open()


def test_lancedb_creates_the_vector_index_once_the_table_is_large_enough(tmp_path):
    backend = open_backend(f"lancedb://{tmp_path}?table=emb", create=True, index_min_rows=300)
    backend.open()
    rng = np.random.default_rng(1)
    first = [Change(f"d{i}", 1, rng.standard_normal(DIM).astype(np.float32)) for i in range(200)]
    backend.write(net_changes(first), {})
    table = backend._rows
    assert table.list_indices() == []
    more = [
        Change(f"d{i}", 1, rng.standard_normal(DIM).astype(np.float32)) for i in range(200, 400)
    ]
    backend.write(net_changes(more), {})
    assert [i.columns for i in table.list_indices()] == [["vector"]]


# --- decoding ------------------------------------------------------------------------------------


def record(value, key=b"doc-1", headers=None) -> Record:
    return Record("updates", value, {"partition": 0, "offset": 7}, None, key, headers)


def test_decoding_an_update_a_deletion_and_a_tombstone():
    v = np.arange(3, dtype=np.float32)
    import orjson
    import pybase64

    as_json = orjson.dumps(
        {"id": "doc-1", "embedding": v.tolist(), "generation": 4, "similarity": "dot"}
    )
    change = decode_update(record(as_json), 3)
    assert change.id == "doc-1" and change.generation == 4 and change.similarity == "dot"
    np.testing.assert_array_equal(change.vector, v)
    b64 = pybase64.b64encode(v.tobytes()).decode()
    as_b64 = orjson.dumps({"id": "doc-1", "embedding_b64": b64, "generation": 5})
    np.testing.assert_array_equal(decode_update(record(as_b64), None).vector, v)
    deleted = orjson.dumps({"id": "doc-1", "deleted": True, "generation": 9})
    assert decode_update(record(deleted), 3) == Change("doc-1", 9, None)
    tombstone = record(None, headers=[("generation", b"11")])
    assert decode_update(tombstone, 3) == Change("doc-1", 11, None)
    assert decode_update(record(None), 3) == Change("doc-1", None, None)


@pytest.mark.parametrize(
    ("value", "key", "reason"),
    [
        (b"{not json", b"d", "invalid_json"),
        (b"[1, 2]", b"d", "not_an_object"),
        (b'{"embedding": [1, 2, 3], "generation": 1}', b"d", "missing_field"),
        (b'{"id": "d", "embedding": [1, 2, 3]}', b"d", "missing_field"),
        (b'{"id": "d", "embedding": [1, 2, 3], "generation": "7"}', b"d", "wrong_type"),
        (b'{"id": "d", "embedding": [1, 2, 3], "generation": -1}', b"d", "wrong_type"),
        (b'{"id": "d", "embedding": [1, 2], "generation": 1}', b"d", "wrong_dimension"),
        (b'{"id": "d", "embedding": [1, 2, NaN], "generation": 1}', b"d", "invalid_json"),
        (b'{"id": "d", "embedding": [1, 2, 1e39], "generation": 1}', b"d", "non_finite"),
        (b'{"id": "d", "embedding": [1, 2, 3], "generation": 1}', b"other", "ambiguous"),
        (
            b'{"id": "d", "embedding": [1, 2, 3], "generation": 1, "similarity": "l2"}',
            b"d",
            "wrong_type",
        ),
        (None, None, "missing_field"),
    ],
)
def test_what_is_not_an_update_is_a_dead_letter_with_its_reason(value, key, reason):
    got = decode_update(record(value, key), 3)
    assert isinstance(got, DeadLetter), got
    assert got.reason == reason, got.detail


def test_a_tombstone_with_a_bad_generation_header_is_a_dead_letter():
    got = decode_update(record(None, headers=[("generation", b"x1")]), 3)
    assert isinstance(got, DeadLetter) and got.reason == "wrong_type"


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),  # what orjson writes
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
)
_numbers = st.one_of(
    st.floats(-1e40, 1e40, allow_nan=False, allow_infinity=False),
    st.integers(-5, 5),
    # Around float32's largest: a number beyond it is infinite in float32, a dead letter.
    st.sampled_from([3.4028235e38, 3.4028236e38, -1e39, 1e-46]),
)
_update_fields = st.fixed_dictionaries(
    {
        "id": st.one_of(st.sampled_from(["d1", "d'2"]), st.sampled_from(["", 7]), _values),
        "generation": st.one_of(st.integers(0, 2**63 - 1), st.integers(-2, 2**64 - 1), _values),
        "embedding": st.one_of(
            st.lists(_numbers, min_size=3, max_size=3),
            st.lists(_numbers, min_size=2, max_size=4),
            st.lists(st.one_of(_numbers, _values), min_size=3, max_size=3),
            st.lists(st.lists(_numbers, min_size=1, max_size=2), min_size=3, max_size=3),
            _values,
        ),
    },
    optional={
        "similarity": st.one_of(st.sampled_from(["cosine", "dot", "l2"]), _values),
        "method": st.just("nudge-n"),
        "gamma": st.floats(0, 1),
        "deleted": st.booleans(),
        "extra": _values,
    },
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    fields=_update_fields,
    drop=st.sampled_from([None, "id", "generation", "embedding"]),
    repeat=st.booleans(),
    dimension=st.sampled_from([None, 3]),
)
def test_the_fast_update_path_decodes_as_the_reference(
    fields, drop, repeat, dimension, monkeypatch
):
    """simdjson's path gives what the orjson path alone gives, or leaves the record to it."""
    import orjson

    fields.pop(drop, None)
    value = orjson.dumps(fields)
    if repeat and fields:
        # A repeated key: orjson keeps the last, simdjson would find the first.
        first = next(iter(fields))
        value = value[:-1] + b"," + orjson.dumps({first: "again"})[1:]
    assert_decoded_as_the_reference(value, dimension, monkeypatch)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    vector=st.lists(_numbers, min_size=3, max_size=3),
    generation=st.integers(0, 2**63 - 1),
    similarity=st.sampled_from([None, "cosine", "dot"]),
    dimension=st.sampled_from([None, 3]),
)
def test_the_fast_update_path_reads_the_numbers_as_the_reference(
    vector, generation, similarity, dimension, monkeypatch
):
    """Updates as `run` writes them, with any numbers: the same vector (float64 rounded to
    float32) or the same dead letter (beyond float32) either way."""
    import orjson

    fields = {"id": "d", "embedding": vector, "generation": generation}
    if similarity is not None:
        fields["similarity"] = similarity
    assert_decoded_as_the_reference(orjson.dumps(fields), dimension, monkeypatch)


def assert_decoded_as_the_reference(value: bytes, dimension, monkeypatch) -> None:
    from stream_nudge.backends import updates

    got = decode_update(record(value, key=None), dimension)
    with monkeypatch.context() as m:
        m.setattr(updates, "_fast_update", lambda *_: None)
        want = decode_update(record(value, key=None), dimension)
    if isinstance(want, DeadLetter):
        assert isinstance(got, DeadLetter) and got.reason == want.reason
    else:
        assert got.id == want.id and got.generation == want.generation
        assert got.similarity == want.similarity
        if want.vector is None:
            assert got.vector is None
        else:
            np.testing.assert_array_equal(got.vector, want.vector)
