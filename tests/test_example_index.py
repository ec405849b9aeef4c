"""The README's example consumer keeps an in-memory index equal to the reduced updates topic."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka import KafkaProducer
from streams import delete_message, records, run_engine
from test_engine_behaviour import toy

from stream_nudge.messages import Record

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from search_index import NudgedIndex, follow

pytestmark = pytest.mark.kafka


def test_example_index_follows_upserts_and_tombstones(kafka_bootstrap, make_topic):
    doc_msgs, events = toy()
    recs = records(doc_msgs, events) + [Record("docs", delete_message("d1"))]
    engine, sink = run_engine(recs, {"gamma": {"every_events": 10}, "publish": {"initial": True}})
    topic = make_topic("updates", cleanup_policy="compact")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for key, value, _, generation in sink.messages:
        producer.send(
            topic, key=key.encode(), value=value, headers=[("generation", str(generation).encode())]
        )
    producer.flush()
    producer.close()

    index = NudgedIndex()
    follow(kafka_bootstrap, topic, index, stop_when_idle=True)
    expected = {k: v for k, v in sink.latest().items() if v is not None}
    assert set(index.vectors) == set(expected) and "d1" not in index.vectors
    for doc_id, body in expected.items():
        assert np.array_equal(
            index.vectors[doc_id], np.asarray(body["embedding"], dtype=np.float32)
        )
    ids, embeddings = engine.adjusted()
    q = embeddings[ids.index("d5")]
    assert index.search(q, 1)[0][0] == "d5"
    # An older message replayed after a restart is ignored.
    stale = orjson.dumps({"id": "d5", "embedding": [0.0] * 8})
    index.apply(b"d5", stale, generation=1)
    assert index.search(q, 1)[0][0] == "d5"
