"""The README's walkthrough on the real data sets: replay, sink into pgvector and LanceDB, and
the gain measured through the backend's own query agrees with numpy and the reference figures."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from backend_walkthrough import walk


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "backend"),
    [
        ("scifact-minilm", "postgresql"),
        ("scifact-minilm", "lancedb"),
        ("cranfield-minilm", "postgresql"),
    ],
)
def test_the_walkthrough_measures_the_gain_through_the_backend(
    shared_data, name, backend, tmp_path, request
):
    if backend == "lancedb":
        to = f"lancedb://{tmp_path / 'lance'}"
    else:
        to = request.getfixturevalue("postgres_dsn")
    table = f"walk_{uuid.uuid4().hex[:8]}"
    result = walk(str(shared_data / name), to, str(tmp_path / "work"), table)
    reference = json.loads((shared_data / name / "reference.json").read_text())
    before, after = result["before"], result["after"]
    # The numpy evaluation of what the backend holds is the reference's, before and after.
    assert before["NDCG@10 numpy"] == pytest.approx(reference["no_ft"]["NDCG@10"], abs=0.01)
    assert after["NDCG@10 numpy"] == pytest.approx(
        reference["reference_nudge_n"]["NDCG@10"], abs=0.5
    )
    assert after["documents"] == before["documents"] == reference["docs"]
    for m in (before, after):
        # The backend's exact search ranks as numpy does; its index loses at most what its
        # recall says it misses.
        assert m["NDCG@10 backend exact"] == pytest.approx(m["NDCG@10 numpy"], abs=0.01)
        assert abs(m["NDCG@10 backend"] - m["NDCG@10 backend exact"]) <= (
            100.0 - m["recall@10 of the index"]
        )
