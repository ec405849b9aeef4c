"""Write one of ``../shared/data``'s embedded data sets as the JSONL logs stream-nudge reads.

    python examples/shared_to_jsonl.py ../shared/data/scifact-minilm /tmp/scifact

writes ``docs.jsonl`` (every document), ``events.jsonl`` (one relevance event per training and
validation query, with its ``split`` explicit and every relevant document in ``doc_ids``) and
``test.jsonl`` (the test queries with their graded relevant documents), ready for
``stream-nudge replay`` and ``stream-nudge evaluate``.

The events come in a fixed shuffled order (seed 0), training and validation queries mixed, as
live traffic would bring them: the validation window fills while training clicks accumulate, so
a learning curve shows the stream as it unfolds. The final query sums do not depend on the order.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import orjson

SPLITS = {0: "train", 1: "validation"}


def export(data_dir: str | Path, out_dir: str | Path) -> dict[str, Path]:
    z = np.load(Path(data_dir) / "embeddings.npz")
    docs, queries, qrels, split = z["doc_emb"], z["query_emb"], z["qrels"], z["split"]
    graded: list[dict[str, float]] = [{} for _ in range(len(queries))]
    for q, d, grade in qrels:
        if grade > 0:  # a judged but irrelevant document is no answer
            graded[q][f"d{d}"] = float(grade)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"{name}.jsonl" for name in ("docs", "events", "test")}
    numpy = orjson.OPT_SERIALIZE_NUMPY
    with paths["docs"].open("wb") as f:
        for i, vector in enumerate(docs):
            f.write(
                orjson.dumps({"op": "upsert", "id": f"d{i}", "embedding": vector}, option=numpy)
            )
            f.write(b"\n")
    with paths["events"].open("wb") as f:
        rows = np.flatnonzero(np.isin(split, list(SPLITS)))
        for i in np.random.default_rng(0).permutation(rows):
            if graded[i]:
                event = {
                    "query_id": f"q{i}",
                    "query_embedding": queries[i],
                    "doc_ids": sorted(graded[i], key=lambda d: int(d[1:])),
                    "split": SPLITS[int(split[i])],
                }
                f.write(orjson.dumps(event, option=numpy) + b"\n")
    with paths["test"].open("wb") as f:
        for i in np.flatnonzero(split == 2):
            if graded[i]:
                line = {"query_id": f"q{i}", "query_embedding": queries[i], "relevant": graded[i]}
                f.write(orjson.dumps(line, option=numpy) + b"\n")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", help="a folder with embeddings.npz")
    parser.add_argument("out_dir", help="where docs.jsonl, events.jsonl and test.jsonl go")
    args = parser.parse_args()
    for name, path in export(args.data_dir, args.out_dir).items():
        print(f"{name:<7}{path}")


if __name__ == "__main__":
    main()
