"""Regenerate docs/results.md and its plots: `stream-nudge evaluate` on every shared data set.

    .venv/bin/python docs/make_results.py          # from the repository root

The data sets are read from STREAM_NUDGE_DATA (default: ../shared/data beside the checkout, the
same setting the tests use). For each of its folders it exports the logs (examples/shared_to_jsonl.py), runs
`stream-nudge evaluate` with the default configuration into docs/results/<name>/, and compares the
batch figures with the reference's ``reference.json``; then it runs the drift scenario
(`stream-nudge evaluate --scenario shift`). The notes under each table were written after reading
these figures; rerun and reread them if the code changes.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("STREAM_NUDGE_DATA") or REPO.parent / "shared" / "data")
OUT = REPO / "docs" / "results"

# Half-life for the decay comparison on the real data sets: about a quarter of each stream, short
# enough to matter. These streams do not drift (the queries are one shuffled sample): the
# comparison is a control, and shows what decay costs where there is nothing to forget.
HALF_LIFE = {"cranfield-minilm": 40, "scifact-minilm": 200}

NOTES = {
    "cranfield-minilm": """\
Where we are below the reference: NUDGE-N's NDCG@10 (39.87 against 40.19). Gamma is chosen on 22
validation queries by hit@1, so the objective takes few values and several separate ranges of gamma
tie for the best (0.5455 = 12 of 22). Our exact search finds all of them and, as the issue asks,
ties go to the smaller gamma: the middle of a narrow best range near 0.067. The reference's grid
(0, 0.02, ..., 0.48) first reaches the best score at 0.08, inside a wider range of the same
validation score, where the test queries happen to do slightly better (test NDCG@10 at 0.06, 0.08,
0.10: 39.73, 40.19, 40.75). Both choices are equally good on the validation data; the gap is
what 22 validation queries can tell apart. NUDGE-M (34.09) is below no fine-tuning (35.46) on this
set, as in the reference (33.87): its hit@1 choice of gamma does not carry to NDCG on the test
queries. The streaming NUDGE-N ends at a different gamma (hysteresis keeps a gamma chosen earlier in
the stream unless a new one beats it by more than `gamma.min_improvement`) and lands above batch.

Decay (half-life 40 events) has nothing to forget here (the events are one shuffled sample, no
drift), so it only discards signal: NUDGE-N's NDCG@10 moves by 0.5 (R@1 by 2.2: one test query
of 46), NUDGE-M loses about 4 points (on 22 validation queries the changed sums lead to another
gamma). Turn decay on only for traffic that drifts.""",
    "scifact-minilm": """\
Every batch figure is at or above the reference. Streaming NUDGE-M ends at a gamma chosen earlier
in the stream and kept by the hysteresis (`gamma.min_improvement`): the new best did not beat it on
the window by more than one query's worth. Decay (half-life 200 events, no drift to follow) moves
each figure by less than 0.5.""",
}


def run(args: list[str]) -> str:
    print("$", shlex.join(args), file=sys.stderr)
    return subprocess.run(args, check=True, capture_output=True, text=True, cwd=REPO).stdout


def command_line(args: list[str]) -> str:
    return shlex.join(
        a.replace(str(REPO) + "/", "").replace(str(DATA), "../shared/data") for a in args
    )


def section(name: str, report: dict, reference: dict | None, cmd: str, out_dir: Path) -> list[str]:
    rows = report["results"]
    d = report["data"]
    lines = [
        f"## {name}",
        "",
        f"{d['documents']} documents; {d['train_events']} training and "
        f"{d['validation_queries']} validation queries; {d['test_queries']} test queries. "
        "Test-split metrics in percent.",
        "",
        "```",
        cmd,
        "```",
        "",
        "| | gamma | R@1 | R@10 | NDCG@10 | MRR |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        gamma = "" if r["gamma"] is None else f"{r['gamma']:.4g}"
        lines.append(
            f"| {r['name']} | {gamma} | {r['R@1']:.2f} | {r['R@10']:.2f} | "
            f"{r['NDCG@10']:.2f} | {r['MRR']:.2f} |"
        )
    if reference is not None:
        lines += [
            "",
            "Against the published reference (`reference.json`; ours minus theirs in brackets):",
            "",
            "| | R@1 | R@10 | NDCG@10 |",
            "| --- | --- | --- | --- |",
        ]
        by_name = {r["name"]: r for r in rows}
        for ours, key, label in (
            ("no fine-tuning", "no_ft", "no fine-tuning"),
            ("NUDGE-M (batch)", "reference_nudge_m", "NUDGE-M"),
            ("NUDGE-N (batch)", "reference_nudge_n", "NUDGE-N"),
        ):
            cells = []
            for m in ("R@1", "R@10", "NDCG@10"):
                mine, theirs = by_name[ours][m], reference[key][m]
                cells.append(f"{mine:.2f} / {theirs:.2f} ({mine - theirs:+.2f})")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    plot = out_dir / "learning-curve.png"
    if plot.exists():
        lines += ["", f"![{name} learning curve]({plot.relative_to(REPO / 'docs')})"]
    return lines


def main() -> None:
    exe = str(Path(sys.executable).parent / "stream-nudge")
    parts = [
        "# Results: `stream-nudge evaluate` on the shared data sets",
        "",
        "Generated by `.venv/bin/python docs/make_results.py` (the commands below are what it ran,",
        "from the repository root). Every run uses the default configuration (`config.example.yaml`):",
        "hit@1 as the objective, a validation window of 2,000 queries, hysteresis of one query's",
        "worth. The learning curves re-select gamma at each point, as the service does when its",
        "input goes idle; the dotted lines are no fine-tuning and the batch runs.",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for folder in sorted(p for p in DATA.iterdir() if (p / "embeddings.npz").exists()):
            name = folder.name
            logs = Path(tmp) / name
            export = [sys.executable, "examples/shared_to_jsonl.py", str(folder), str(logs)]
            run(export)
            out_dir = OUT / name
            args = [
                exe, "evaluate",
                "--docs", str(logs / "docs.jsonl"),
                "--events", str(logs / "events.jsonl"),
                "--test", str(logs / "test.jsonl"),
                "--out", str(out_dir),
                "--half-life-events", str(HALF_LIFE.get(name, 100)),
                "--title", f"{name}: test NDCG@10 while the stream is replayed",
            ]  # fmt: skip
            run(args)
            report = json.loads((out_dir / "results.json").read_text())
            reference = json.loads((folder / "reference.json").read_text())
            cmd = (
                command_line(export)
                .replace(sys.executable, ".venv/bin/python")
                .replace(tmp, "/tmp")
                + "\n"
                + command_line(args).replace(exe, ".venv/bin/stream-nudge").replace(tmp, "/tmp")
            )
            parts += ["", *section(name, report, reference, cmd, out_dir)]
            if name in NOTES:
                parts += ["", NOTES[name]]
    out_dir = OUT / "shift"
    args = [exe, "evaluate", "--scenario", "shift", "--out", str(out_dir),
            "--title", "shift scenario: test NDCG@10 on the new cluster"]  # fmt: skip
    run(args)
    report = json.loads((out_dir / "results.json").read_text())
    for leftover in (out_dir / "scenario").glob("*.jsonl"):
        leftover.unlink()
    (out_dir / "scenario").rmdir()
    cmd = command_line(args).replace(exe, ".venv/bin/stream-nudge")
    parts += ["", *section("Drift: the shift scenario", report, None, cmd, out_dir)]
    parts += [
        "",
        """\
1,000 documents in 50 topics, d = 64; 8,000 click events on 1,000 of the documents, every tenth
held out for validation; the first 4,000 worded in one cluster of vocabulary (A), the last 4,000
in another (B); 600 test queries worded as in B (`stream_nudge/scenarios.py`). The validation
window holds the latest 100 queries. Without decay, each document's query sum still points half
toward its cluster-A wording at the end; with a half-life of 1,000 events, the clicks of the first
half weigh 2^-4 or less, so the documents point to the B wording their users now use. The curves
show it: while cluster A streams, the cluster-B test queries do worse than without fine-tuning
(every nudge points toward A's wording); once B begins both runs climb, the decayed ones faster
and higher (NDCG@10 at the end: 54.1 against 40.9 for NUDGE-M, 54.9 against 40.8 for NUDGE-N).
Batch NUDGE, which sees all clicks at once, is where the run without decay ends. The gamma panel
is on a symmetric log scale: NUDGE-M's gamma is unbounded and ranges widely, NUDGE-N's stays below 2.""",
    ]
    (REPO / "docs" / "results.md").write_text("\n".join(parts) + "\n")
    print("wrote docs/results.md", file=sys.stderr)


if __name__ == "__main__":
    main()
