#!/usr/bin/env python3
"""A Qdrant gRPC emulator, in the spirit of moto for AWS: the tests of `RemoteStore` need a Qdrant server,
and none can be installed on this machine (no registry it reaches ships the server binary).

Everything protocol- and engine-related comes from Qdrant's own Python package `qdrant-client`:
  * its generated gRPC servicer base classes and `add_*Servicer_to_server` (qdrant_client.grpc),
  * its converters between gRPC messages and REST models (GrpcToRest / RestToGrpc),
  * its local mode, `QdrantClient(":memory:")`, Qdrant's Python reference implementation of collections,
    payload filters and (exact) vector search, as the storage and search engine.
This file is only glue: decode the request -> GrpcToRest -> call the local client -> RestToGrpc -> response.

State lives in memory and is lost when the process stops.

    python server.py [--host 127.0.0.1] [--port 16334]
    QDRANT_EMULATOR_PORT     default port (16334)
    QDRANT_EMULATOR_API_KEY  when set, every call except HealthCheck (exempt on the real server too) must
                             carry the metadata `api-key` (or `authorization: Bearer ...`), else UNAUTHENTICATED.

Errors follow the real server: unknown collection -> NOT_FOUND "Not found: Collection `x` doesn't exist!",
existing collection -> ALREADY_EXISTS "Wrong input: Collection `x` already exists!", what the reference
implementation rejects (wrong dimension, bad id, ...) -> INVALID_ARGUMENT, anything not wired here ->
UNIMPLEMENTED "... is not implemented by the qdrant emulator".
"""

import argparse
import hmac
import logging
import os
import signal
import threading
import time
import warnings
from concurrent import futures

import grpc
from pydantic import ValidationError
from qdrant_client import QdrantClient
from qdrant_client import grpc as pb
from qdrant_client.conversions.conversion import (
    GrpcToRest,
    RestToGrpc,
    grpc_field_type_to_payload_schema,
)
from qdrant_client.http import models as rest

# The local mode warns that payload indexes and search params have no effect there; that is expected here.
warnings.filterwarnings("ignore", category=UserWarning)
log = logging.getLogger("qdrant-emulator")


class Failure(Exception):
    """An error answered with a given gRPC status code."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def opt(message, field, convert=lambda value: value, default=None):
    """The converted value of an optional field, or `default` when it is unset (or an empty message)."""
    if not message.HasField(field):
        return default
    value = getattr(message, field)
    if hasattr(value, "ListFields") and not value.ListFields():
        return default
    return convert(value)


class Engine:
    """The local client, behind one lock: the local mode is not meant for concurrent use."""

    def __init__(self):
        self.client = QdrantClient(":memory:")
        self.lock = threading.Lock()

    def require(self, name):
        if not self.client.collection_exists(name):
            raise Failure(grpc.StatusCode.NOT_FOUND, f"Not found: Collection `{name}` doesn't exist!")


def rpc(service, needs_collection=True):
    """Wraps a handler `(self, request) -> response`: lock, existence check, status mapping, `time`, log."""

    def decorate(handler):
        method = f"qdrant.{service}/{handler.__name__}"

        def wrapper(self, request, context):
            started = time.perf_counter()
            name = getattr(request, "collection_name", "")
            code, message = grpc.StatusCode.OK, ""
            try:
                with self.engine.lock:
                    if needs_collection:
                        self.engine.require(name)
                    response = handler(self, request)
            except Failure as error:
                code, message = error.code, str(error)
            except (ValueError, TypeError, KeyError, AssertionError, ValidationError) as error:
                code, message = grpc.StatusCode.INVALID_ARGUMENT, str(error) or type(error).__name__
            except Exception as error:  # noqa: BLE001 - every other failure is the emulator's own
                code, message = grpc.StatusCode.INTERNAL, f"Service internal error: {error}"
            elapsed = time.perf_counter() - started
            log.info(
                "%s collection=%s -> %s (%.1f ms)%s",
                method, name or "-", code.name, elapsed * 1000, f": {message}" if message else "",
            )
            if code is not grpc.StatusCode.OK:
                context.abort(code, message)
            if "time" in response.DESCRIPTOR.fields_by_name:
                response.time = elapsed  # seconds, as the real server reports it
            return response

        return wrapper

    return decorate


def unimplemented_rest(base, service):
    """Makes every method of `base` a subclass does not define answer a clear UNIMPLEMENTED."""

    def decorate(cls):
        for attribute in vars(base):
            if attribute.startswith("_") or attribute in vars(cls):
                continue

            def refuse(self, request, context, _method=f"qdrant.{service}/{attribute}"):
                log.info("%s -> UNIMPLEMENTED", _method)
                context.abort(
                    grpc.StatusCode.UNIMPLEMENTED, f"{_method} is not implemented by the qdrant emulator"
                )

            setattr(cls, attribute, refuse)
        return cls

    return decorate


@unimplemented_rest(pb.QdrantServicer, "Qdrant")
class Root(pb.QdrantServicer):
    def __init__(self, engine):
        self.engine = engine

    @rpc("Qdrant", needs_collection=False)
    def HealthCheck(self, request):
        return RestToGrpc.convert_health_check_reply(self.engine.client.info())


@unimplemented_rest(pb.CollectionsServicer, "Collections")
class Collections(pb.CollectionsServicer):
    def __init__(self, engine):
        self.engine = engine

    @rpc("Collections", needs_collection=False)
    def CollectionExists(self, request):
        exists = self.engine.client.collection_exists(request.collection_name)
        return pb.CollectionExistsResponse(result=pb.CollectionExists(exists=exists))

    @rpc("Collections", needs_collection=False)
    def Create(self, request):
        name = request.collection_name
        if self.engine.client.collection_exists(name):
            raise Failure(grpc.StatusCode.ALREADY_EXISTS, f"Wrong input: Collection `{name}` already exists!")
        created = self.engine.client.create_collection(
            name,
            vectors_config=opt(request, "vectors_config", GrpcToRest.convert_vectors_config),
            sparse_vectors_config=opt(
                request, "sparse_vectors_config", GrpcToRest.convert_sparse_vector_config
            ),
            metadata=GrpcToRest.convert_payload(request.metadata) if request.metadata else None,
        )
        return pb.CollectionOperationResponse(result=created)

    @rpc("Collections")
    def Get(self, request):
        info = self.engine.client.get_collection(request.collection_name)
        return pb.GetCollectionInfoResponse(result=RestToGrpc.convert_collection_info(info))

    @rpc("Collections", needs_collection=False)
    def List(self, request):
        described = self.engine.client.get_collections().collections
        return pb.ListCollectionsResponse(
            collections=[RestToGrpc.convert_collection_description(d) for d in described]
        )

    @rpc("Collections", needs_collection=False)
    def Delete(self, request):
        # As on the real server: deleting a missing collection is not an error, it answers false.
        deleted = self.engine.client.delete_collection(request.collection_name)
        return pb.CollectionOperationResponse(result=deleted)


def completed(result):
    return pb.PointsOperationResponse(result=RestToGrpc.convert_update_result(result))


def scored(points):
    return [RestToGrpc.convert_scored_point(point) for point in points]


@unimplemented_rest(pb.PointsServicer, "Points")
class Points(pb.PointsServicer):
    def __init__(self, engine):
        self.engine = engine

    @rpc("Points")
    def Upsert(self, request):
        # The local mode applies every write at once: the answer is always Completed.
        return completed(
            self.engine.client.upsert(
                request.collection_name,
                points=[GrpcToRest.convert_point_struct(point) for point in request.points],
                update_filter=opt(request, "update_filter", GrpcToRest.convert_filter),
            )
        )

    @rpc("Points")
    def Delete(self, request):
        selector = GrpcToRest.convert_points_selector(request.points)
        return completed(self.engine.client.delete(request.collection_name, points_selector=selector))

    @rpc("Points")
    def Get(self, request):
        records = self.engine.client.retrieve(
            request.collection_name,
            ids=[GrpcToRest.convert_point_id(point_id) for point_id in request.ids],
            with_payload=opt(request, "with_payload", GrpcToRest.convert_with_payload_selector, True),
            with_vectors=opt(request, "with_vectors", GrpcToRest.convert_with_vectors_selector, False),
        )
        return pb.GetResponse(result=[RestToGrpc.convert_record(record) for record in records])

    @rpc("Points")
    def Query(self, request):
        query = GrpcToRest.convert_query_points(request)
        response = self.engine.client.query_points(
            request.collection_name,
            query=query.query,
            using=query.using,
            prefetch=query.prefetch,
            query_filter=query.filter,
            search_params=query.params,
            limit=query.limit if query.limit is not None else 10,
            offset=query.offset,
            with_payload=query.with_payload if query.with_payload is not None else False,
            with_vectors=query.with_vector if query.with_vector is not None else False,
            score_threshold=query.score_threshold,
            lookup_from=query.lookup_from,
        )
        return pb.QueryResponse(result=scored(response.points))

    @rpc("Points")
    def Search(self, request):
        # The deprecated search, answered by the same engine call as Query.
        vector = list(request.vector)
        if request.HasField("sparse_indices"):
            vector = rest.SparseVector(indices=list(request.sparse_indices.data), values=vector)
        response = self.engine.client.query_points(
            request.collection_name,
            query=vector,
            using=opt(request, "vector_name"),
            query_filter=opt(request, "filter", GrpcToRest.convert_filter),
            search_params=opt(request, "params", GrpcToRest.convert_search_params),
            limit=request.limit,
            offset=opt(request, "offset"),
            with_payload=opt(request, "with_payload", GrpcToRest.convert_with_payload_selector, False),
            with_vectors=opt(request, "with_vectors", GrpcToRest.convert_with_vectors_selector, False),
            score_threshold=opt(request, "score_threshold"),
        )
        return pb.SearchResponse(result=scored(response.points))

    @rpc("Points")
    def Scroll(self, request):
        records, next_offset = self.engine.client.scroll(
            request.collection_name,
            scroll_filter=opt(request, "filter", GrpcToRest.convert_filter),
            limit=opt(request, "limit", default=10),
            order_by=opt(request, "order_by", GrpcToRest.convert_order_by),
            offset=opt(request, "offset", GrpcToRest.convert_point_id),
            with_payload=opt(request, "with_payload", GrpcToRest.convert_with_payload_selector, True),
            with_vectors=opt(request, "with_vectors", GrpcToRest.convert_with_vectors_selector, False),
        )
        return pb.ScrollResponse(
            result=[RestToGrpc.convert_record(record) for record in records],
            next_page_offset=(
                RestToGrpc.convert_extended_point_id(next_offset) if next_offset is not None else None
            ),
        )

    @rpc("Points")
    def Count(self, request):
        result = self.engine.client.count(
            request.collection_name,
            count_filter=opt(request, "filter", GrpcToRest.convert_filter),
            exact=opt(request, "exact", default=True),
        )
        return pb.CountResponse(result=RestToGrpc.convert_count_result(result))

    @rpc("Points")
    def CreateFieldIndex(self, request):
        # Payload indexes only speed up the real server; the local mode keeps them (text indexes matter for
        # text queries) and otherwise ignores them. The answer is Completed, as for `wait=true`.
        if request.HasField("field_index_params"):
            schema = GrpcToRest.convert_payload_schema_params(request.field_index_params)
        elif request.HasField("field_type"):
            schema = GrpcToRest.convert_payload_schema_type(
                grpc_field_type_to_payload_schema(request.field_type)
            )
        else:
            raise Failure(grpc.StatusCode.INVALID_ARGUMENT, "Wrong input: field_type is required")
        return completed(
            self.engine.client.create_payload_index(
                request.collection_name, request.field_name, field_schema=schema
            )
        )

    @rpc("Points")
    def DeleteFieldIndex(self, request):
        return completed(
            self.engine.client.delete_payload_index(request.collection_name, request.field_name)
        )


@unimplemented_rest(pb.SnapshotsServicer, "Snapshots")
class Snapshots(pb.SnapshotsServicer):
    pass


HEALTH_CHECKS = ("/qdrant.Qdrant/HealthCheck", "/grpc.health.v1.Health/Check")


class ApiKeyInterceptor(grpc.ServerInterceptor):
    """Requires the API key the way the real server does: metadata `api-key`, or `authorization: Bearer`."""

    def __init__(self, key):
        self.key = key.encode()

    def intercept_service(self, continuation, details):
        if details.method in HEALTH_CHECKS:
            return continuation(details)
        metadata = dict(details.invocation_metadata or ())
        given = metadata.get("api-key")
        bearer = metadata.get("authorization", "")
        if given is None and bearer[:7].lower() == "bearer ":
            given = bearer[7:]
        if given is None:
            message = "Must provide an API key or an Authorization bearer token"
        elif not hmac.compare_digest(str(given).encode(), self.key):
            message = "Invalid API key or JWT"
        else:
            return continuation(details)
        log.info("%s -> UNAUTHENTICATED: %s", details.method.lstrip("/"), message)

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        return grpc.unary_unary_rpc_method_handler(deny)


def main():
    parser = argparse.ArgumentParser(description="Qdrant gRPC emulator built on qdrant-client's local mode")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("QDRANT_EMULATOR_PORT", "16334")))
    args = parser.parse_args()
    logging.basicConfig(format="%(asctime)s qdrant-emulator %(message)s", level=logging.INFO)

    api_key = os.environ.get("QDRANT_EMULATOR_API_KEY") or None
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        interceptors=[ApiKeyInterceptor(api_key)] if api_key else [],
        options=[
            ("grpc.so_reuseport", 0),  # else a second instance would silently share a port in use
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ],
    )
    engine = Engine()
    pb.add_QdrantServicer_to_server(Root(engine), server)
    pb.add_CollectionsServicer_to_server(Collections(engine), server)
    pb.add_PointsServicer_to_server(Points(engine), server)
    pb.add_SnapshotsServicer_to_server(Snapshots(), server)
    address = f"{args.host}:{args.port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as error:
        raise SystemExit(f"qdrant-emulator: cannot listen on {address}: {error}")
    server.start()
    log.info("listening on %s (api key %s)", address, "required" if api_key else "not required")

    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    server.stop(grace=1).wait()
    log.info("stopped")


if __name__ == "__main__":
    main()
