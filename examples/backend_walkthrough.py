"""From a real data set to a search backend, with the commands a user runs, and the gain measured
through the backend's own query.

    python examples/backend_walkthrough.py ../shared/data/scifact-minilm \\
        --to postgresql://postgres@127.0.0.1:5432/postgres [--work /tmp/walk]
    python examples/backend_walkthrough.py ../shared/data/scifact-minilm --to lancedb:///tmp/walk/lance

1. writes the data set as JSONL logs (``examples/shared_to_jsonl.py``): documents, relevance
   events, test queries;
2. loads the documents' own embeddings into the backend (``stream-nudge sink --create``), as a
   backend holds them before stream-nudge, and searches the test queries there: *before*;
3. replays the logs (``stream-nudge replay``) and writes its updates with ``stream-nudge sink``:
   the documents NUDGE moved are replaced by their higher generation;
4. searches the test queries again: *after*.

Each search is the backend's own (pgvector: ``ORDER BY embedding <=> q LIMIT 10`` through the HNSW
index; LanceDB: ``table.search(q)``), next to the backend's exact search and the numpy evaluation
of the embeddings it holds. The index's recall@10 against the exact search says how much of a
difference between them the index explains.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shared_to_jsonl import export

from stream_nudge.backends.search import measure
from stream_nudge.evaluate import read_test_set
from stream_nudge.messages import encode_update


def originals_as_updates(docs: Path, out: Path, method: str = "nudge-n") -> Path:
    """The documents' own embeddings (unit length for cosine) as updates at generation 0: what a
    backend holds before stream-nudge (any update the service publishes has a higher one)."""
    similarity = "cosine" if method == "nudge-n" else "dot"
    with docs.open("rb") as f, out.open("wb") as o:
        for line in f:
            doc = orjson.loads(line)
            vector = np.asarray(doc["embedding"], dtype=np.float32)
            if similarity == "cosine":
                vector = vector / np.linalg.norm(vector)
            o.write(encode_update(doc["id"], vector, method, 0.0, 0, similarity) + b"\n")
    return out


def stream_nudge(*args: str) -> None:
    command = [sys.executable, "-m", "stream_nudge", *args]
    print("$ stream-nudge " + " ".join(args), flush=True)
    subprocess.run(command, check=True)


def walk(data_dir: str, to: str, work: str, table: str = "walkthrough") -> dict[str, dict]:
    work_dir = Path(work)
    paths = export(data_dir, work_dir)
    test = read_test_set(paths["test"])
    originals = originals_as_updates(paths["docs"], work_dir / "originals.updates.jsonl")
    sink = ["sink", "--to", to, "--table", table]
    stream_nudge(*sink, "--create", "--from", str(originals))
    before = measure(to, table, test.vectors, test.relevant)
    updates = work_dir / "updates.jsonl"
    stream_nudge(
        "replay", "--docs", str(paths["docs"]), "--events", str(paths["events"]),
        "--out", str(updates), "--no-progress",
    )  # fmt: skip
    stream_nudge(*sink, "--from", str(updates))
    after = measure(to, table, test.vectors, test.relevant)
    return {"before": before, "after": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", help="a data set of ../shared/data (embeddings.npz)")
    parser.add_argument("--to", required=True, help="postgresql://... or lancedb://PATH")
    parser.add_argument("--work", default="stream-nudge-walkthrough", help="where the logs go")
    parser.add_argument("--table", default="walkthrough")
    args = parser.parse_args()
    result = walk(args.data_dir, args.to, args.work, args.table)
    names = list(result["before"])
    print(f"\n{'':28} {'before':>8} {'after':>8}")
    for name in names:
        print(f"{name:28} {result['before'][name]:8.2f} {result['after'][name]:8.2f}")


if __name__ == "__main__":
    main()
