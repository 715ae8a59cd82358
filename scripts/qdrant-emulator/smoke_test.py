#!/usr/bin/env python3
"""Self-check of the Qdrant gRPC emulator, driven by Qdrant's own Python client over gRPC.

    .venv/bin/python scripts/qdrant-emulator/smoke_test.py [--host 127.0.0.1] [--port 16334]
                                                           [--api-key KEY] [--skip-api-key]

Checks the running emulator at --host/--port (collections, payload indexes, upsert, filtered query and
search, scroll, count, get, delete, error codes), sending --api-key when that emulator requires one; then
starts a second instance of its own, with an API key, on a free port, checks that it refuses calls without
the right key and serves them with it, and stops that instance. Ends with `N passed, N failed`; exits
non-zero on any failure.
"""

import argparse
import math
import os
import socket
import subprocess
import sys
import time
import uuid
import warnings

import grpc
from qdrant_client import QdrantClient, models
from qdrant_client import grpc as pb
from qdrant_client.conversions.conversion import RestToGrpc

warnings.filterwarnings("ignore")  # e.g. "api key is used with an insecure connection"
SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server.py")
results = {"passed": 0, "failed": 0}


def check(name, condition, detail=""):
    results["passed" if condition else "failed"] += 1
    print(f"{'ok  ' if condition else 'FAIL'} {name}{'' if condition else f' -- {detail}'}", flush=True)


def status_of(call):
    """The gRPC status code and details a call fails with, or (None, result) when it succeeds."""
    try:
        return None, call()
    except grpc.RpcError as error:
        return error.code(), error.details()


def client(host, port, api_key=None):
    return QdrantClient(
        host=host, grpc_port=port, prefer_grpc=True, api_key=api_key, https=False, check_compatibility=False
    )


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / (math.hypot(*a) * math.hypot(*b))


def main_checks(host, port, api_key):
    qc = client(host, port, api_key)
    check("HealthCheck answers", qc.info().version == "1.20.0", qc.info())
    name = f"smoke-{uuid.uuid4().hex[:8]}"

    check("collection_exists is false before create", qc.collection_exists(name) is False)
    created = qc.create_collection(name, models.VectorParams(size=4, distance=models.Distance.COSINE))
    check("create_collection answers true", created is True, created)
    check("collection_exists is true after create", qc.collection_exists(name) is True)
    code, details = status_of(
        lambda: qc.create_collection(name, models.VectorParams(size=4, distance=models.Distance.COSINE))
    )
    check(
        "creating it again is ALREADY_EXISTS",
        code == grpc.StatusCode.ALREADY_EXISTS and details == f"Wrong input: Collection `{name}` already exists!",
        (code, details),
    )

    for field in ("owner", "task_id"):
        result = qc.create_payload_index(name, field, models.PayloadSchemaType.KEYWORD, wait=True)
        check(f"keyword index on {field} is completed", result.status == models.UpdateStatus.COMPLETED, result)

    task, other_task = str(uuid.uuid4()), str(uuid.uuid4())
    rows = [  # (owner, task_id, text, vector)
        ("alice", task, "closest", [1.0, 0.1, 0.0, 0.0]),
        ("alice", task, "middle", [0.6, 0.6, 0.1, 0.0]),
        ("alice", task, "farthest", [0.0, 0.2, 1.0, 0.3]),
        ("alice", other_task, "other task", [1.0, 0.1, 0.0, 0.0]),
        ("bob", task, "other owner", [1.0, 0.1, 0.0, 0.0]),
    ]
    points = [
        models.PointStruct(
            id=str(uuid.uuid4()), vector=vector, payload={"owner": owner, "task_id": task_id, "text": text}
        )
        for owner, task_id, text, vector in rows
    ]
    result = qc.upsert(name, points=points, wait=True)
    check("upsert with wait is completed", result.status == models.UpdateStatus.COMPLETED, result)

    probe = [1.0, 0.0, 0.0, 0.0]
    must = models.Filter(
        must=[
            models.FieldCondition(key="owner", match=models.MatchValue(value="alice")),
            models.FieldCondition(key="task_id", match=models.MatchValue(value=task)),
        ]
    )
    hits = qc.query_points(name, query=probe, query_filter=must, limit=10, with_payload=True).points
    texts = [hit.payload["text"] for hit in hits]
    check("query returns only the filter's points, best first", texts == ["closest", "middle", "farthest"], texts)
    expected = [cosine(probe, vector) for *_, vector in rows[:3]]
    check(
        "query scores are the cosine similarities",
        all(abs(hit.score - want) < 1e-5 for hit, want in zip(hits, expected)),
        ([hit.score for hit in hits], expected),
    )
    check("query ids are the upserted UUIDs", {str(hit.id) for hit in hits} == {p.id for p in points[:3]})
    limited = qc.query_points(name, query=probe, query_filter=must, limit=2, with_payload=False).points
    check("query honours limit and with_payload=false", len(limited) == 2 and not limited[0].payload, limited)

    search = qc.grpc_points.Search(
        pb.SearchPoints(
            collection_name=name, vector=probe, limit=5, filter=RestToGrpc.convert_filter(must),
            with_payload=pb.WithPayloadSelector(enable=True),
        )
    )
    check(
        "deprecated Search answers like query",
        [hit.payload["text"].string_value for hit in search.result] == ["closest", "middle", "farthest"]
        and search.time > 0,
        search,
    )

    check("count with the filter", qc.count(name, count_filter=must).count == 3)
    check("count of all points", qc.count(name).count == 5)
    records, _ = qc.scroll(name, scroll_filter=must, limit=10)
    check("scroll with the filter", sorted(r.payload["text"] for r in records) == ["closest", "farthest", "middle"])
    got = qc.retrieve(name, ids=[points[4].id])
    check("retrieve by id", len(got) == 1 and got[0].payload["owner"] == "bob", got)
    info = qc.get_collection(name)
    check(
        "get_collection reports size and count",
        info.config.params.vectors.size == 4 and info.points_count == 5,
        info,
    )
    check("list includes it", name in {c.name for c in qc.get_collections().collections})

    code, details = status_of(
        lambda: qc.upsert(name, points=[models.PointStruct(id=str(uuid.uuid4()), vector=[1.0, 2.0, 3.0])])
    )
    check("wrong-dimension upsert is INVALID_ARGUMENT", code == grpc.StatusCode.INVALID_ARGUMENT, (code, details))
    code, details = status_of(lambda: qc.query_points("no-such-collection", query=probe))
    check(
        "query of an unknown collection is NOT_FOUND",
        code == grpc.StatusCode.NOT_FOUND and "doesn't exist" in details,
        (code, details),
    )
    code, details = status_of(lambda: qc.facet(name, key="owner"))
    check(
        "an unwired method is UNIMPLEMENTED, saying so",
        code == grpc.StatusCode.UNIMPLEMENTED and "qdrant emulator" in details,
        (code, details),
    )

    result = qc.delete(name, points_selector=models.PointIdsList(points=[points[3].id]), wait=True)
    check("delete by id", result.status == models.UpdateStatus.COMPLETED and qc.count(name).count == 4)
    qc.delete(name, points_selector=models.FilterSelector(filter=must), wait=True)
    check("delete by filter", qc.count(name).count == 1)
    check("delete_collection", qc.delete_collection(name) is True and not qc.collection_exists(name))
    qc.close()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api_key_checks(host):
    port, key = free_port(), f"key-{uuid.uuid4().hex}"
    env = dict(os.environ, QDRANT_EMULATOR_API_KEY=key)
    proc = subprocess.Popen(
        [sys.executable, SERVER, "--host", host, "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        anonymous = client(host, port)
        deadline = time.monotonic() + 30
        while status_of(anonymous.info)[0] is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        check("keyed instance: HealthCheck needs no key (as on the real server)", status_of(anonymous.info)[0] is None)
        code, details = status_of(lambda: anonymous.collection_exists("x"))
        check("keyed instance: no key is UNAUTHENTICATED", code == grpc.StatusCode.UNAUTHENTICATED, (code, details))
        code, details = status_of(lambda: client(host, port, "wrong").collection_exists("x"))
        check("keyed instance: a wrong key is UNAUTHENTICATED", code == grpc.StatusCode.UNAUTHENTICATED, (code, details))
        code, result = status_of(lambda: client(host, port, key).collection_exists("x"))
        check("keyed instance: the right key is served", code is None and result is False, (code, result))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("QDRANT_EMULATOR_PORT", "16334")))
    parser.add_argument("--api-key", help="the key the emulator at --port requires, if any")
    parser.add_argument("--skip-api-key", action="store_true", help="skip the keyed second instance")
    args = parser.parse_args()
    try:
        main_checks(args.host, args.port, args.api_key)
        if not args.skip_api_key:
            api_key_checks(args.host)
    except Exception as error:  # noqa: BLE001 - an unexpected failure is a failed check, not a traceback
        check("no unexpected error", False, repr(error))
    print(f"smoke: {results['passed']} passed, {results['failed']} failed")
    sys.exit(1 if results["failed"] else 0)


if __name__ == "__main__":
    main()
