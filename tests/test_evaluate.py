"""`stream-nudge evaluate`: metrics against trec_eval, the reports, the curve, drift, bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
import pytrec_eval
from hypothesis import given, settings
from hypothesis import strategies as st
from streams import doc_message, event_message, write_jsonl

from stream_nudge.cli import main
from stream_nudge.metrics import rankings, retrieval_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from shared_to_jsonl import export

METRICS = ("R@1", "R@10", "NDCG@10", "MRR")


@pytest.mark.parametrize("seed", range(5))
def test_metrics_agree_with_trec_eval(seed):
    """R@k (recall, or precision when more than k are relevant), NDCG@10 with graded gains and
    MRR, against trec_eval itself on the same scores, to 1e-6."""
    rng = np.random.default_rng(seed)
    docs = rng.normal(size=(80, 8)).astype(np.float32)
    queries = rng.normal(size=(25, 8)).astype(np.float32)
    relevance = []
    for _ in queries:
        n_rel = int(rng.integers(1, 16))  # some queries with more than 10 relevant documents
        rows = rng.choice(len(docs), size=n_rel, replace=False)
        relevance.append({int(r): float(rng.integers(1, 5)) for r in rows})
    ours = retrieval_metrics(docs, queries, relevance)

    scores = queries @ docs.T
    qrel = {f"q{i}": {f"d{r}": int(g) for r, g in rel.items()} for i, rel in enumerate(relevance)}
    run = {
        f"q{i}": {f"d{j}": float(scores[i, j]) for j in range(len(docs))}
        for i in range(len(queries))
    }
    measures = {"recall_1", "recall_10", "P_1", "P_10", "ndcg_cut_10", "recip_rank"}
    theirs = pytrec_eval.RelevanceEvaluator(qrel, measures).evaluate(run)
    want = {m: [] for m in METRICS}
    for i, rel in enumerate(relevance):
        t = theirs[f"q{i}"]
        for k in (1, 10):
            want[f"R@{k}"].append(t[f"recall_{k}"] if len(rel) <= k else t[f"P_{k}"])
        want["NDCG@10"].append(t["ndcg_cut_10"])
        want["MRR"].append(t["recip_rank"])
    for m in METRICS:
        assert ours[m] / 100.0 == pytest.approx(np.mean(want[m]), abs=1e-6), m


@pytest.mark.parametrize("seed", range(3))
def test_rankings_and_mrr_break_ties_as_a_stable_full_sort(seed):
    """Small integer vectors, so that many scores tie, also at the cut of the top k: the top k
    and the reciprocal rank of the first relevant document are those of a stable sort of every
    document by score (the lower row first among equals)."""
    rng = np.random.default_rng(seed)
    for _ in range(100):
        n_docs = int(rng.integers(1, 50))
        docs = rng.integers(-2, 3, size=(n_docs, 3)).astype(np.float32)
        queries = rng.integers(-2, 3, size=(12, 3)).astype(np.float32)
        order = np.argsort(-(queries @ docs.T), axis=1, kind="stable")
        depth = int(rng.integers(1, n_docs + 1))
        assert rankings(docs, queries, depth).tolist() == order[:, :depth].tolist()
        relevance = [
            {int(r): 1.0 for r in rng.choice(n_docs, size=int(rng.integers(1, 4)))} for _ in queries
        ]
        expected = []
        for i, rel in enumerate(relevance):
            rank = next(k for k, row in enumerate(order[i]) if row in rel)
            expected.append(1.0 / (rank + 1))
        mrr = retrieval_metrics(docs, queries, relevance, ks=(1,), ndcg_k=1)["MRR"]
        assert mrr == pytest.approx(100.0 * np.mean(expected), abs=1e-9)


def write_config(tmp_path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_evaluate_on_real_data_matches_the_reference_and_the_batch(shared_data, tmp_path, capsys):
    """Cranfield: no fine-tuning equals the reference's figures; batch NUDGE-M/N are within 0.5
    of the reference or above; the streaming engine (every validation query in its window, one
    selection at the end) ends exactly where the batch run does."""
    name = "cranfield-minilm"
    paths = export(shared_data / name, tmp_path / "data")
    config = write_config(tmp_path, "gamma:\n  min_improvement: 0.0\n")
    out = tmp_path / "report"
    code = main(
        ["evaluate", "--docs", str(paths["docs"]), "--events", str(paths["events"]),
         "--test", str(paths["test"]), "--out", str(out), "--every", "100000",
         "--config", config]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in report["results"]}
    reference = json.loads((shared_data / name / "reference.json").read_text())
    for m in ("R@1", "R@10", "NDCG@10"):
        assert rows["no fine-tuning"][m] == pytest.approx(reference["no_ft"][m], abs=0.006)
    for method, key in (("NUDGE-M", "reference_nudge_m"), ("NUDGE-N", "reference_nudge_n")):
        batch, streaming = rows[f"{method} (batch)"], rows[f"{method} (streaming)"]
        for m in ("R@10", "NDCG@10"):
            assert batch[m] >= reference[key][m] - 0.5, (method, m)
        # The events come shuffled, so the sums add in another order: gamma's region ends move
        # by rounding.
        assert streaming["gamma"] == pytest.approx(batch["gamma"], rel=1e-5)
        for m in METRICS:
            assert streaming[m] == pytest.approx(batch[m], abs=1e-6), (method, m)
    assert report["data"]["test_queries"] == reference["test"]
    # The same table on the terminal and in the Markdown file, and a plot worth looking at.
    markdown = (out / "results.md").read_text()
    for name_ in rows:
        assert name_ in printed and f"| {name_} |" in markdown
    assert "![learning curve](learning-curve.png)" in markdown
    import matplotlib.image

    image = matplotlib.image.imread(out / "learning-curve.png")
    assert image.shape[0] >= 500 and image.shape[1] >= 900


def small_logs(tmp_path, n_docs=40, dim=6, n_events=50, seed=3):
    rng = np.random.default_rng(seed)
    docs = rng.normal(size=(n_docs, dim))
    warp = np.eye(dim) + rng.normal(size=(dim, dim)) / np.sqrt(dim)
    events, test = [], []
    for n in range(n_events + 10):
        target = int(rng.integers(0, n_docs // 2))
        q = warp @ docs[target] / np.linalg.norm(docs[target]) + 0.2 * rng.normal(size=dim)
        if n < n_events:
            split = "validation" if n % 5 == 0 else "train"
            events.append(event_message(f"q{n}", q, f"d{target}", split))
        else:
            test.append({"query_id": f"t{n}", "query_embedding": q.tolist(),
                         "relevant": {f"d{target}": 2}})  # fmt: skip
    docs_path = write_jsonl(
        tmp_path / "docs.jsonl", [doc_message(f"d{i}", docs[i]) for i in range(n_docs)]
    )
    events_path = write_jsonl(tmp_path / "events.jsonl", events)
    test_path = write_jsonl(tmp_path / "test.jsonl", [orjson.dumps(t) for t in test])
    return docs_path, events_path, test_path, test


def test_the_learning_curve_starts_without_fine_tuning_and_steps_every_n_events(tmp_path):
    from stream_nudge.config import Config
    from stream_nudge.evaluate import evaluate

    docs, events, test, _ = small_logs(tmp_path)
    report = evaluate(Config(), docs, events, test, every=15)
    base = report.rows[0]
    for name, curve in report.curves.items():
        assert [p["events"] for p in curve] == [0, 15, 30, 45, 50], name
        assert curve[0]["gamma"] == 0.0
        for m in METRICS:
            assert curve[0][m] == pytest.approx(base[m], abs=1e-9)
    # The last point is where an engine fed the same steps, re-selecting after each, ends.
    from stream_nudge.engine import Engine
    from stream_nudge.evaluate import read_logs

    logs = read_logs(Config(), docs, events)
    for method, name in (("nudge-m", "NUDGE-M (streaming)"), ("nudge-n", "NUDGE-N (streaming)")):
        engine = Engine(Config(method=method))
        engine.process(logs.doc_records)
        for start in range(0, len(logs.event_records), 15):
            engine.process(logs.event_records[start : start + 15])
            engine.reselect()
        assert report.curves[name][-1]["gamma"] == engine.gamma
        assert report.curves[name][-1]["gamma"] > 0


def test_relevant_documents_outside_the_corpus_are_dropped_and_counted(tmp_path):
    from stream_nudge.config import Config
    from stream_nudge.evaluate import evaluate

    docs, events, test, lines = small_logs(tmp_path)
    lines[0]["relevant"]["nowhere"] = 1  # dropped, the query stays
    lines[1]["relevant"] = ["nowhere"]  # nothing left: skipped
    write_jsonl(test, [orjson.dumps(t) for t in lines])
    report = evaluate(Config(), docs, events, test)
    assert report.data["relevant_not_in_corpus"] == 2
    assert report.data["test_queries_skipped"] == 1
    assert report.data["test_queries"] == len(lines) - 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{nope", "test line 2: not JSON"),
        (b'{"query_id": "x", "query_embedding": [1, 2, 3, 4, 5, 6]}', "test line 2: relevant"),
        (
            b'{"query_id": "x", "query_embedding": [1, 2], "relevant": ["d1"]}',
            "has 2 numbers, the stream has 6",
        ),
        (
            b'{"query_id": "x", "query_embedding": [1, 2, 3, 4, 5, 6], "relevant": {"d1": 0}}',
            "grade of 'd1'",
        ),
        (b'{"query_embedding": [1, 2, 3, 4, 5, 6], "relevant": ["d1"]}', "query_id"),
        (b'{"query_id": "x", "query_embedding_b64": "!!", "relevant": ["d1"]}', "not valid base64"),
    ],
)
def test_a_bad_test_file_is_a_usage_error_naming_the_line(tmp_path, capsys, line, message):
    docs, events, test, lines = small_logs(tmp_path)
    write_jsonl(test, [orjson.dumps(lines[0]), line])
    args = ["evaluate", "--docs", str(docs), "--events", str(events), "--test", str(test)]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_missing_inputs_are_a_usage_error(tmp_path, capsys):
    assert main(["evaluate", "--docs", "x.jsonl", "--out", str(tmp_path)]) == 2
    assert "--events, --test" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scenario", "shift", "--docs", "d.jsonl"], "drop --docs"),
        (["--scenario", "shift", "--half-life-events", "0"], "--half-life-events"),
        (["--scenario", "shift", "--half-life-events", "inf"], "--half-life-events"),
        (["--scenario", "shift", "--every", "0"], "--every"),
    ],
)
def test_bad_evaluate_options_are_usage_errors_before_any_work(tmp_path, capsys, args, message):
    assert main(["evaluate", *args, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing generated or written


def test_decay_wins_on_the_shift_scenario(tmp_path, capsys):
    """Queries move from one cluster of wording to another: on today's (cluster B) test queries,
    the streaming engine with decay ends well above the one without, for both methods."""
    assert main(["evaluate", "--scenario", "shift", "--out", str(tmp_path)]) == 0
    rows = {r["name"]: r for r in json.loads((tmp_path / "results.json").read_text())["results"]}
    for method in ("NUDGE-M", "NUDGE-N"):
        plain = rows[f"{method} (streaming)"]["NDCG@10"]
        decayed = rows[f"{method} (streaming, half-life 1000 events)"]["NDCG@10"]
        assert decayed > plain + 5.0, (method, plain, decayed)
    assert rows["no fine-tuning"]["NDCG@10"] < min(
        r["NDCG@10"] for r in rows.values() if r["mode"] != "none"
    )


def test_what_evaluate_drops_is_said_in_the_terminal_and_in_results_md(tmp_path, capsys):
    docs, events, test, lines = small_logs(tmp_path)
    events.write_bytes(events.read_bytes() + b"not json\n" + b'{"query_id": 3}\n')
    lines.append({"query_id": "t-unknown", "query_embedding": lines[0]["query_embedding"],
                  "relevant": {"d-missing": 1}})  # fmt: skip
    write_jsonl(test, [orjson.dumps(t) for t in lines])
    out = tmp_path / "out"
    args = ["evaluate", "--docs", str(docs), "--events", str(events), "--test", str(test)]
    assert main([*args, "--out", str(out), "--every", "25"]) == 0
    err = capsys.readouterr().err
    rejected = "Rejected 2 bad lines of the documents and events logs (invalid_json 1, "
    skipped = "Skipped 1 test queries with no relevant document in the corpus; dropped 1"
    for text in (err, (out / "results.md").read_text()):
        assert rejected in text and skipped in text
    data = json.loads((out / "results.json").read_text())["data"]
    assert sum(data["dead_letters"].values()) == 2 and data["test_queries_skipped"] == 1


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_docs=st.integers(2, 40), k=st.integers(1, 12))
def test_ndcg_of_a_backends_rankings_is_retrieval_metrics_ndcg(seed, n_docs, k):
    """The NDCG of rankings given as ids (a search backend's answers) is the one
    retrieval_metrics computes from the embeddings that ranked them."""
    from stream_nudge.metrics import ndcg_of_rankings

    rng = np.random.default_rng(seed)
    docs = rng.standard_normal((n_docs, 4)).astype(np.float32)
    queries = rng.standard_normal((6, 4)).astype(np.float32)
    relevance = [
        {int(r): float(rng.integers(1, 3)) for r in rng.choice(n_docs, rng.integers(1, 4))}
        for _ in queries
    ]
    ids = [f"d{i}" for i in range(n_docs)]
    ranked = [[ids[r] for r in row] for row in rankings(docs, queries, k)]
    by_id = [{ids[r]: g for r, g in rel.items()} for rel in relevance]
    want = retrieval_metrics(docs, queries, relevance, ks=(1,), ndcg_k=k)[f"NDCG@{k}"]
    assert ndcg_of_rankings(ranked, by_id, k) == pytest.approx(want, abs=1e-9)
