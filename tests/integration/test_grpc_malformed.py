"""Requests that do not decode as their method's message: a precise status, a quiet log, counted.

Raw bytes go over a real grpc.aio channel (no serializer), to every method of MediaService, to
the health check and to reflection, on servers with and without ``--token``; a normal client is
served meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from media.app import HarkApp
from media.v1 import media_pb2 as pb
from tests.support import grpc_stub, running_server

TOKEN = "s3cret-token-for-tests"
SERVICE = pb.DESCRIPTOR.services_by_name["MediaService"]
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
EXEMPT = (HEALTH_CHECK, REFLECTION)  # answered without a token
# Each fails to decode as any of Hark's request messages: a truncated varint tag, a length
# running past the end, invalid UTF-8 in field 1 (a string in every message that has one).
GARBAGE = (b"\xff\xff\xff", b"\x0a\x7fabc", b"\x0a\x02\xff\xfe\x12\x01")


def methods() -> Iterator[tuple[str, bool, bool]]:
    for method in SERVICE.methods:
        path = f"/{SERVICE.full_name}/{method.name}"
        yield path, method.client_streaming, method.server_streaming


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def counted(app: HarkApp, path: str, code: str) -> float:
    value = app.metrics.registry.get_sample_value(
        "hark_grpc_requests_total", {"method": path, "code": code}
    )
    return value or 0.0


async def normal_client(app: HarkApp, token: str | None, stop: asyncio.Event) -> int:
    served = 0
    async with grpc_stub(app, token) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        while not stop.is_set() or served == 0:
            got = await stub.GetSession(pb.GetSessionRequest(session_id=session.id))
            assert got.id == session.id
            served += 1
    return served


async def garbage_everywhere(
    app: HarkApp, metadata: tuple[tuple[str, str], ...]
) -> list[tuple[str, grpc.aio.AioRpcError]]:
    results: list[tuple[str, grpc.aio.AioRpcError]] = []
    async with grpc.aio.insecure_channel(app.grpc_target) as channel:
        targets = [*methods(), (HEALTH_CHECK, False, False), (REFLECTION, True, True)]
        for path, streaming_in, streaming_out in targets:
            for body in GARBAGE:
                error = await call_with(channel, path, streaming_in, streaming_out, body, metadata)
                results.append((path, error))
    return results


async def call_with(
    channel: grpc.aio.Channel,
    path: str,
    streaming_in: bool,
    streaming_out: bool,
    body: bytes,
    metadata: tuple[tuple[str, str], ...],
) -> grpc.aio.AioRpcError:
    kwargs: dict[str, Any] = {"metadata": metadata, "timeout": 30}
    try:
        if streaming_in and streaming_out:
            async for _ in channel.stream_stream(path)(iter([body]), **kwargs):
                pass
        elif streaming_in:
            await channel.stream_unary(path)(iter([body]), **kwargs)
        elif streaming_out:
            async for _ in channel.unary_stream(path)(body, **kwargs):
                pass
        else:
            await channel.unary_unary(path)(body, **kwargs)
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError(f"{path} accepted {body!r}")


def assert_quiet(records: Records, calls: int) -> None:
    loud = [r for r in records.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not loud, [r.getMessage() for r in loud]
    undecodable = [r for r in records.records if "undecodable" in r.getMessage()]
    assert len(undecodable) < calls // 4, [r.getMessage() for r in undecodable]


@pytest.mark.parametrize("token", [None, TOKEN], ids=["open", "token"])
async def test_garbage_requests_get_invalid_argument_naming_the_method(
    records: Records, token: str | None
) -> None:
    async with running_server(token=token) as app:
        stop = asyncio.Event()
        client = asyncio.ensure_future(normal_client(app, token, stop))
        auth = (("authorization", f"Bearer {token}"),) if token else ()
        try:
            results = await garbage_everywhere(app, auth)
        finally:
            stop.set()
            served = await client
        assert served > 0
        for path, error in results:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, error)
            assert path.rsplit("/", 1)[1] in (error.details() or ""), (path, error.details())
        for path, _, _ in methods():
            assert counted(app, path, "INVALID_ARGUMENT") == len(GARBAGE), path
        assert_quiet(records, len(results))


async def test_unauthenticated_garbage_is_refused_before_it_is_decoded(records: Records) -> None:
    async with running_server(token=TOKEN) as app:
        results = await garbage_everywhere(app, ())
        for path, error in results:
            expected = (
                grpc.StatusCode.INVALID_ARGUMENT
                if path in EXEMPT
                else grpc.StatusCode.UNAUTHENTICATED
            )
            assert error.code() == expected, (path, error)
        for path, _, _ in methods():
            assert counted(app, path, "UNAUTHENTICATED") == len(GARBAGE), path
        assert_quiet(records, len(results))


async def test_the_health_watch_streams_through_the_interceptors() -> None:
    async with running_server(token=TOKEN) as app:
        async with grpc.aio.insecure_channel(app.grpc_target) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            first = await watch.read()
            watch.cancel()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
