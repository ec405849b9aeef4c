"""``stream-nudge evaluate``: what fine-tuning buys on held-out test queries.

From the logs ``replay`` reads (documents, then relevance events) and a file of test queries with
their relevant documents, it measures R@1, R@10, NDCG@10 and MRR (:mod:`stream_nudge.metrics`) for:

- no fine-tuning (the documents as given);
- batch NUDGE-M and NUDGE-N: :func:`stream_nudge.fine_tune` on every training event, gamma chosen
  on every validation query (the events' ``split``, else the same stable hash the engine uses);
- the streaming engine with each method, as ``replay`` runs it; optionally again with decay.

While the streaming engine replays the events it stops every ``every`` events, re-selects gamma on
its window (as the service does when its input goes idle) and scores the test queries: a learning
curve of test NDCG@10 and of gamma.

The test file is JSONL, one query per line::

    {"query_id": "t-1", "query_embedding": [...], "relevant": {"doc-17": 2, "doc-3": 1}}

``query_embedding_b64`` (base64 of little-endian float32) may replace ``query_embedding``, and
``relevant`` may be a list of ids (all grade 1). Grades are positive numbers (gain = grade).
Relevant ids that are not in the corpus are dropped (and counted), and a query left with none is
skipped (and counted): nothing could retrieve them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from stream_nudge.config import Config, DecayConfig
from stream_nudge.core.finetune import fine_tune
from stream_nudge.core.geometry import unit_rows
from stream_nudge.engine import Engine
from stream_nudge.loop import Ending, run
from stream_nudge.messages import DeadLetter, Decoder, DocDelete, DocUpsert, Event, is_validation
from stream_nudge.metrics import retrieval_metrics
from stream_nudge.sinks import DiscardSink
from stream_nudge.sources import JsonlSource, MemorySource

__all__ = ["EvaluationError", "Report", "TestSet", "evaluate", "read_test_set"]

METRICS = ("R@1", "R@10", "NDCG@10", "MRR")
METHOD_NAMES = {"nudge-m": "NUDGE-M", "nudge-n": "NUDGE-N"}

# Points on the learning curve when the caller does not say how often: enough to see the shape,
# few enough that re-selecting gamma at each stays a small part of the run.
_CURVE_POINTS = 20


class EvaluationError(ValueError):
    """The evaluation's input cannot be used (a bad test file, no documents)."""


@dataclass
class TestSet:
    """Test queries and their graded relevant documents (by id)."""

    query_ids: list[str]
    vectors: np.ndarray  # float32 [n, dim]
    relevant: list[dict[str, float]]


@dataclass
class Logs:
    """The documents after every upsert and delete, and the decoded events, in order."""

    doc_ids: list[str]
    doc_vectors: np.ndarray  # float32 [n_docs, dim], as given
    doc_records: list
    event_records: list
    events: list[Event]
    dead_letters: Counter = field(default_factory=Counter)


@dataclass
class Report:
    """Everything ``evaluate`` measured; ``to_json()`` is what the JSON file holds."""

    rows: list[dict]  # {"name", "method", "mode", "gamma", "R@1", ...}
    curves: dict[str, list[dict]]  # run name -> [{"events", "gamma", "NDCG@10", ...}]
    data: dict
    seconds: float = 0.0
    plots: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "data": self.data,
            "results": self.rows,
            "curves": self.curves,
            "plots": self.plots,
            "seconds": self.seconds,
        }

    def dropped(self) -> list[str]:
        """What the evaluation left out of its input, one sentence each (empty when nothing)."""
        d = self.data
        out = []
        dead = d.get("dead_letters", {})
        if dead:
            reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(dead.items()))
            out.append(
                f"Rejected {sum(dead.values())} bad lines of the documents and events logs "
                f"({reasons}); the runs above did not see them."
            )
        skipped, missing = d.get("test_queries_skipped", 0), d.get("relevant_not_in_corpus", 0)
        if skipped or missing:
            out.append(
                f"Skipped {skipped} test queries with no relevant document in the corpus; "
                f"dropped {missing} relevant ids not in the corpus."
            )
        return out

    def table(self) -> list[str]:
        """The results as aligned text lines for a terminal."""
        width = max(len(row["name"]) for row in self.rows) + 2
        head = f"{'':<{width}}{'gamma':>9}" + "".join(f"{m:>9}" for m in METRICS)
        lines = [head]
        for row in self.rows:
            gamma = "" if row["gamma"] is None else f"{row['gamma']:.4g}"
            lines.append(
                f"{row['name']:<{width}}{gamma:>9}" + "".join(f"{row[m]:9.2f}" for m in METRICS)
            )
        return lines

    def markdown(self, title: str = "stream-nudge evaluation") -> str:
        d = self.data
        out = [
            f"# {title}",
            "",
            f"{d['documents']} documents, {d['train_events']} training and "
            f"{d['validation_queries']} validation queries from {d['events']} events, "
            f"{d['test_queries']} test queries. Metrics in percent on the test queries.",
            "",
            "| | gamma | " + " | ".join(METRICS) + " |",
            "| --- | --- | " + " | ".join("---" for _ in METRICS) + " |",
        ]
        for row in self.rows:
            gamma = "" if row["gamma"] is None else f"{row['gamma']:.4g}"
            cells = " | ".join(f"{row[m]:.2f}" for m in METRICS)
            out.append(f"| {row['name']} | {gamma} | {cells} |")
        for sentence in self.dropped():
            out += ["", sentence]
        for plot in self.plots:
            out += ["", f"![learning curve]({Path(plot).name})"]
        if self.curves and not self.plots:
            out += ["", "(No plot: install the `plot` extra, matplotlib, to draw the curves.)"]
        out += ["", "Learning curve (test NDCG@10 after each step of the stream):", ""]
        names = list(self.curves)
        out.append("| events | " + " | ".join(f"{n} (gamma)" for n in names) + " |")
        out.append("| --- | " + " | ".join("---" for _ in names) + " |")
        steps = sorted({p["events"] for c in self.curves.values() for p in c})
        by_run = {n: {p["events"]: p for p in c} for n, c in self.curves.items()}
        for step in steps:
            cells = []
            for n in names:
                p = by_run[n].get(step)
                cells.append("" if p is None else f"{p['NDCG@10']:.2f} ({p['gamma']:.3g})")
            out.append(f"| {step} | " + " | ".join(cells) + " |")
        return "\n".join(out) + "\n"


# --- input ------------------------------------------------------------------------------------


def _relevant(obj: dict, line: int) -> dict[str, float]:
    rel = obj.get("relevant")
    if isinstance(rel, list) and all(isinstance(x, str) for x in rel):
        return dict.fromkeys(rel, 1.0)
    if isinstance(rel, dict):
        out = {}
        for doc_id, grade in rel.items():
            if isinstance(grade, bool) or not isinstance(grade, (int, float)) or not grade > 0:
                raise EvaluationError(
                    f"test line {line}: the grade of {doc_id!r} must be a number > 0"
                )
            out[doc_id] = float(grade)
        return out
    raise EvaluationError(
        f"test line {line}: relevant must be a list of document ids or an object id -> grade"
    )


def read_test_set(path: str | os.PathLike, dimension: int | None = None) -> TestSet:
    """Read the test file (format in the module docstring); any bad line is an error."""
    ids, vectors, relevant = [], [], []
    # The streams' own vector checks (array or base64, dimension, finite); the first vector
    # fixes the dimension when the caller does not.
    decoder = Decoder(dimension)
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise EvaluationError(f"test line {number}: not JSON ({exc})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("query_id"), str):
                raise EvaluationError(f"test line {number}: needs a string query_id")
            try:
                vector = decoder.vector(obj, "query_embedding")
            except ValueError as exc:
                raise EvaluationError(f"test line {number}: {exc}") from None
            ids.append(obj["query_id"])
            vectors.append(vector)
            relevant.append(_relevant(obj, number))
    if not ids:
        raise EvaluationError(f"{path}: no test queries")
    return TestSet(ids, np.stack(vectors), relevant)


def read_logs(config: Config, docs: str | os.PathLike, events: str | os.PathLike) -> Logs:
    """Decode both logs as the engine would; bad lines are counted (the engine dead-letters them)."""
    decoder = Decoder.for_config(config)
    dead: Counter = Counter()
    records = {"docs": [], "events": []}
    for topic, path in (("docs", docs), ("events", events)):
        source = JsonlSource(*((path, None) if topic == "docs" else (None, path)))
        try:
            while (batch := source.next_batch(10_000)) is not None:
                records[topic].extend(batch)
        finally:
            source.close()
    corpus: dict[str, np.ndarray] = {}
    for item in decoder.decode_batch(records["docs"]):
        if isinstance(item, DocUpsert):
            corpus[item.id] = item.vector
        elif isinstance(item, DocDelete):
            corpus.pop(item.id, None)
        else:
            dead[item.reason] += 1
    decoded = []
    for item in decoder.decode_batch(records["events"]):
        if isinstance(item, DeadLetter):
            dead[item.reason] += 1
        elif isinstance(item, Event):
            decoded.append(item)
    if not corpus:
        raise EvaluationError(f"{docs}: no documents")
    return Logs(
        list(corpus),
        np.stack(list(corpus.values())).astype(np.float32),
        records["docs"],
        records["events"],
        decoded,
        dead,
    )


# --- the runs ---------------------------------------------------------------------------------


class _Scorer:
    """Test metrics of any embedding table whose rows are named by document id."""

    def __init__(self, test: TestSet, doc_ids: list[str]):
        known = set(doc_ids)
        self.dropped = sum(1 for rel in test.relevant for d in rel if d not in known)
        keep = [i for i, rel in enumerate(test.relevant) if any(d in known for d in rel)]
        self.skipped = len(test.relevant) - len(keep)
        if not keep:
            raise EvaluationError("no test query has a relevant document in the corpus")
        self.vectors = test.vectors[keep]
        self.relevant = [{d: g for d, g in test.relevant[i].items() if d in known} for i in keep]

    def __call__(self, doc_ids: list[str], embeddings: np.ndarray) -> dict[str, float]:
        row_of = {d: r for r, d in enumerate(doc_ids)}
        relevance = [{row_of[d]: g for d, g in rel.items()} for rel in self.relevant]
        return retrieval_metrics(embeddings, self.vectors, relevance, ks=(1, 10), ndcg_k=10)


def _splits(config: Config, logs: Logs):
    """Training pairs and validation queries, as the engine splits them."""
    row_of = {d: r for r, d in enumerate(logs.doc_ids)}
    train_q, train_a, train_w = [], [], []
    val: dict[str, tuple[np.ndarray, set[int]]] = {}
    fraction = config.validation.fraction
    for event in logs.events:
        rows = sorted({row_of[d] for d in event.doc_ids if d in row_of})
        split = event.split or (
            "validation" if is_validation(event.query_id, fraction) else "train"
        )
        if split == "train":
            if rows:
                train_q.append(event.vector)
                train_a.append(rows)
                train_w.append(event.weight)
        else:
            _, answers = val.setdefault(event.query_id, (event.vector, set()))
            answers.update(rows)
    val_items = [(v, sorted(a)) for v, a in val.values() if a]
    dim = logs.doc_vectors.shape[1]

    def stack(vectors):
        return np.stack(vectors) if vectors else np.zeros((0, dim), np.float32)

    return (
        stack(train_q),
        train_a,
        np.array(train_w, dtype=np.float64),
        stack([v for v, _ in val_items]),
        [a for _, a in val_items],
    )


def _streaming(config: Config, logs: Logs, score: _Scorer, every: int):
    """Replay the logs through a fresh engine; the curve and the final metrics."""
    engine = Engine(config)
    batch, nowhere = config.replay.batch_size, DiscardSink()
    run(engine, MemorySource(logs.doc_records), nowhere, batch, ending=Ending(select=False))
    ids, embeddings = engine.adjusted()
    curve = [{"events": 0, "gamma": engine.gamma, **score(ids, embeddings)}]
    records = logs.event_records
    for start in range(0, len(records), every):
        stop = min(start + every, len(records))
        # Each point of the curve is where a replay of the events so far would end.
        run(engine, MemorySource(records[start:stop]), nowhere, batch)
        ids, embeddings = engine.adjusted()
        point = score(ids, embeddings)
        curve.append({"events": stop, "gamma": engine.gamma, **point})
    return curve


def evaluate(
    config: Config,
    docs: str | os.PathLike,
    events: str | os.PathLike,
    test: str | os.PathLike,
    every: int | None = None,
    methods: tuple[str, ...] = ("nudge-m", "nudge-n"),
    decay_half_life_events: float | None = None,
    progress=None,
) -> Report:
    """Run every comparison (module docstring) and return the report; nothing is written."""
    started = time.perf_counter()
    say = progress or (lambda message: None)
    logs = read_logs(config, docs, events)
    test_set = read_test_set(test, logs.doc_vectors.shape[1])
    score = _Scorer(test_set, logs.doc_ids)
    originals = unit_rows(logs.doc_vectors)[0]
    n_events = len(logs.event_records)
    every = max(1, every or math.ceil(n_events / _CURVE_POINTS) or 1)

    rows = [{"name": "no fine-tuning", "method": None, "mode": "none", "gamma": None}]
    rows[0].update(score(logs.doc_ids, originals))
    train_q, train_a, train_w, val_q, val_a = _splits(config, logs)
    for method in methods:
        say(f"batch {METHOD_NAMES[method]}")
        result = fine_tune(
            originals,
            train_q,
            train_a,
            val_q,
            val_a,
            method=method,
            objective=config.objective,
            train_weights=train_w,
        )
        row = {"name": f"{METHOD_NAMES[method]} (batch)", "method": method, "mode": "batch"}
        row.update(gamma=result.gamma, **score(logs.doc_ids, result.embeddings))
        rows.append(row)

    runs = []
    # The streaming rows run the configuration as given (its label says so if it decays); the
    # comparison run decays by events only, whatever the configuration says.
    own = ""
    if config.decay.enabled:
        parts = [
            f"{value:g} {unit}"
            for value, unit in (
                (config.decay.half_life_events, "events"),
                (config.decay.half_life_seconds, "s"),
            )
            if value is not None
        ]
        own = f", half-life {' and '.join(parts)}"
    for method in methods:
        runs.append((f"{METHOD_NAMES[method]} (streaming{own})", method, config.decay))
        if decay_half_life_events is not None:
            decay = DecayConfig(half_life_events=decay_half_life_events)
            label = (
                f"{METHOD_NAMES[method]} (streaming, half-life {decay_half_life_events:g} events)"
            )
            runs.append((label, method, decay))
    curves = {}
    for name, method, decay in runs:
        say(name)
        run_config = dataclasses.replace(config, method=method, decay=decay)
        curve = _streaming(run_config, logs, score, every)
        curves[name] = curve
        last = curve[-1]
        mode = "streaming" if decay == config.decay else "streaming+decay"
        rows.append(
            {"name": name, "method": method, "mode": mode, "gamma": last["gamma"]}
            | {m: last[m] for m in METRICS}
        )
    data = {
        "documents": len(logs.doc_ids),
        "events": n_events,
        "train_events": len(train_a),
        "validation_queries": len(val_a),
        "test_queries": len(score.relevant),
        "test_queries_skipped": score.skipped,
        "relevant_not_in_corpus": score.dropped,
        "dead_letters": dict(logs.dead_letters),
        "curve_every_events": every,
        "objective": config.objective,
    }
    return Report(rows, curves, data, time.perf_counter() - started)


# --- output -----------------------------------------------------------------------------------


def plot_curves(report: Report, path: str | os.PathLike, title: str = "") -> bool:
    """Draw test NDCG@10 and gamma against events; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(12, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    colours = {"nudge-m": "tab:blue", "nudge-n": "tab:red"}
    for name, curve in report.curves.items():
        method = next(r["method"] for r in report.rows if r["name"] == name)
        style = "--" if "half-life" in name else "-"
        x = [p["events"] for p in curve]
        top.plot(
            x,
            [p["NDCG@10"] for p in curve],
            style,
            marker="o",
            markersize=3,
            color=colours[method],
            label=name,
        )
        bottom.step(
            x, [p["gamma"] for p in curve], style, where="post", color=colours[method], label=name
        )
    for row in report.rows:
        if row["mode"] == "none":
            top.axhline(row["NDCG@10"], color="black", linestyle=":", label=row["name"])
        elif row["mode"] == "batch":
            top.axhline(
                row["NDCG@10"],
                color=colours[row["method"]],
                linestyle=":",
                alpha=0.6,
                label=row["name"],
            )
    top.set_ylabel("test NDCG@10 (%)")
    top.set_title(title or "Test NDCG@10 while the stream is replayed")
    top.grid(alpha=0.3)
    # Outside the axes, so that no curve hides behind it.
    top.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    bottom.set_xlabel("events replayed")
    # NUDGE-M's gamma is unbounded and NUDGE-N's below 2: a log scale keeps both readable.
    bottom.set_yscale("symlog", linthresh=0.1)
    bottom.set_ylabel("gamma in force (symlog)")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def write_report(report: Report, out_dir: str | os.PathLike, title: str = "") -> list[Path]:
    """The JSON file, the Markdown file and (with matplotlib) the plot, in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "learning-curve.png"
    if report.curves and plot_curves(report, png, title):
        report.plots = [str(png)]
    paths = [out / "results.json", out / "results.md"]
    paths[0].write_bytes(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2) + b"\n")
    paths[1].write_text(report.markdown(title or "stream-nudge evaluation"))
    return paths + [Path(p) for p in report.plots]
