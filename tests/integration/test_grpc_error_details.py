"""Every gRPC error carries a google.rpc.ErrorInfo that names it; the SDK raises the same errors.

Real grpc.aio servers on port 0, read through grpcio-status as any client would.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.rpc.error_details_pb2 import ErrorInfo
from grpc_status import rpc_status

from media.app import HarkApp
from media.client.hark_client import HarkClient
from media.errors import (
    CapacityExceeded,
    HarkError,
    InvalidRequest,
    NotReady,
    SessionClosed,
    SessionNotFound,
    Unauthorized,
)
from media.v1 import media_pb2 as pb
from tests.support import grpc_stub, running_server

TOKEN = "s3cret-token-for-tests"
DOMAIN = "hark.media.v1"


def error_info(error: grpc.aio.AioRpcError) -> ErrorInfo:
    status = rpc_status.from_call(error)
    assert status is not None, f"no status details in {error}"
    infos = []
    for detail in status.details:
        info = ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert len(infos) == 1, status
    assert infos[0].domain == DOMAIN
    return infos[0]


async def failure(call: Awaitable[Any] | AsyncIterable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if isinstance(call, AsyncIterable):
            async for _ in call:
                pass
        else:
            await call
    return caught.value


def expect(
    error: grpc.aio.AioRpcError, code: grpc.StatusCode, reason: str, **metadata: str
) -> None:
    assert error.code() == code, error
    info = error_info(error)
    assert info.reason == reason, info
    for key, value in metadata.items():
        assert info.metadata[key] == value, info


@pytest.fixture
async def app() -> AsyncIterator[HarkApp]:
    async with running_server(max_sessions=3) as app:
        yield app


async def test_unknown_session_is_session_not_found(app: HarkApp) -> None:
    async with grpc_stub(app) as stub:
        error = await failure(stub.GetSession(pb.GetSessionRequest(session_id="nope")))
        expect(error, grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND", session_id="nope")
        error = await failure(stub.WatchSession(pb.WatchSessionRequest(session_id="nope")))
        expect(error, grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND", session_id="nope")


BAD_ARGUMENTS: list[tuple[str, Callable[[Any, str], Any]]] = [
    ("session_id", lambda stub, sid: stub.GetSession(pb.GetSessionRequest())),
    ("ttl_seconds", lambda stub, sid: stub.CreateSession(pb.CreateSessionRequest(ttl_seconds=-1))),
    (
        "metadata",
        lambda stub, sid: stub.CreateSession(pb.CreateSessionRequest(metadata={"k": "v" * 5000})),
    ),
    (
        "vad.aggressiveness",
        lambda stub, sid: stub.StartListening(
            pb.StartListeningRequest(session_id=sid, vad=pb.VadOptions(aggressiveness=9))
        ),
    ),
    (
        "vad",
        lambda stub, sid: stub.StartListening(
            pb.StartListeningRequest(session_id=sid, vad=pb.VadOptions(start_ratio=7.0))
        ),
    ),
    (
        "sample_rate",
        lambda stub, sid: stub.StreamAudio(pb.StreamAudioRequest(session_id=sid, sample_rate=7)),
    ),
    ("mode", lambda stub, sid: stub.StreamAudio(pb.StreamAudioRequest(session_id=sid, mode=9))),
    (
        "chunk_ms",
        lambda stub, sid: stub.StreamAudio(pb.StreamAudioRequest(session_id=sid, chunk_ms=10)),
    ),
    (
        "start.channels",
        lambda stub, sid: stub.PlayAudio(
            iter(
                [
                    pb.PlayAudioRequest(
                        start=pb.PlayAudioStart(session_id=sid, sample_rate=16000, channels=3)
                    )
                ]
            )
        ),
    ),
    (
        "start.sample_rate",
        lambda stub, sid: stub.PlayAudio(
            iter([pb.PlayAudioRequest(start=pb.PlayAudioStart(session_id=sid, sample_rate=1))])
        ),
    ),
    (
        "start",
        lambda stub, sid: stub.PlayAudio(iter([pb.PlayAudioRequest(pcm=b"\0\0")])),
    ),
    (
        "start.playback_id",
        lambda stub, sid: stub.PlayAudio(
            iter(
                [
                    pb.PlayAudioRequest(
                        start=pb.PlayAudioStart(
                            session_id=sid, sample_rate=16000, playback_id="\n" * 9
                        )
                    )
                ]
            )
        ),
    ),
]


@pytest.mark.parametrize("field,call", BAD_ARGUMENTS, ids=[f for f, _ in BAD_ARGUMENTS])
async def test_a_bad_argument_names_its_field(
    app: HarkApp, field: str, call: Callable[[Any, str], Any]
) -> None:
    async with grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        error = await failure(call(stub, session.id))
        expect(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", field=field)


async def test_session_states_are_named(app: HarkApp) -> None:
    async with grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        early = await failure(stub.StartListening(pb.StartListeningRequest(session_id=session.id)))
        expect(
            early,
            grpc.StatusCode.FAILED_PRECONDITION,
            "SESSION_NOT_READY",
            session_id=session.id,
            state="NEW",
        )
        await stub.EndSession(pb.EndSessionRequest(session_id=session.id, detail="bye"))
        late = await failure(stub.StartListening(pb.StartListeningRequest(session_id=session.id)))
        expect(
            late,
            grpc.StatusCode.FAILED_PRECONDITION,
            "SESSION_CLOSED",
            session_id=session.id,
            close_reason="API_END",
            detail="bye",
        )
        ahead = await failure(
            stub.WatchSession(pb.WatchSessionRequest(session_id=session.id, since_revision=99))
        )
        expect(ahead, grpc.StatusCode.OUT_OF_RANGE, "REVISION_OUT_OF_RANGE")


async def test_limits_and_drain_are_named(app: HarkApp) -> None:
    async with grpc_stub(app) as stub:
        for _ in range(3):
            await stub.CreateSession(pb.CreateSessionRequest())
        full = await failure(stub.CreateSession(pb.CreateSessionRequest()))
        expect(full, grpc.StatusCode.RESOURCE_EXHAUSTED, "CAPACITY_EXCEEDED", retry_after_s="2")
        app.sessions.drain()
        draining = await failure(stub.CreateSession(pb.CreateSessionRequest()))
        expect(draining, grpc.StatusCode.UNAVAILABLE, "DRAINING")


async def test_missing_and_wrong_tokens_are_unauthenticated() -> None:
    async with running_server(token=TOKEN) as app:
        async with grpc_stub(app) as stub:
            missing = await failure(stub.ListSessions(pb.ListSessionsRequest()))
            expect(missing, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
        async with grpc_stub(app, "wrong-token-123") as stub:
            wrong = await failure(stub.WatchSessions(pb.WatchSessionsRequest()))
            expect(wrong, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


async def test_undecodable_requests_are_malformed_request(app: HarkApp) -> None:
    method = "/media.v1.MediaService/GetSession"
    async with grpc.aio.insecure_channel(app.grpc_target) as channel:
        error = await failure(channel.unary_unary(method)(b"\xff\xff\xff"))
    expect(error, grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST", method=method)


async def test_garbage_after_a_valid_play_audio_start_is_malformed_request(app: HarkApp) -> None:
    method = "/media.v1.MediaService/PlayAudio"
    async with grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
    start = pb.PlayAudioStart(session_id=session.id, sample_rate=16000)
    messages = [pb.PlayAudioRequest(start=start).SerializeToString(), b"\xff\xff\xff"]
    async with grpc.aio.insecure_channel(app.grpc_target) as channel:
        error = await failure(channel.stream_unary(method)(iter(messages)))
    expect(error, grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST", method=method)


async def test_the_sdk_raises_the_errors_the_server_named(app: HarkApp) -> None:
    async with HarkClient(app.grpc_target) as hark:
        with pytest.raises(SessionNotFound) as unknown:
            await hark.get_session("nope")
        assert unknown.value.session_id == "nope"
        session = await hark.create_session()
        with pytest.raises(NotReady) as early:
            await hark.start_listening(session.id, wait_for_ready=False)
        assert (early.value.session_id, early.value.state) == (session.id, "NEW")
        with pytest.raises(TimeoutError):
            await hark.start_listening(session.id, wait_for_ready=True, timeout=0.5)
        with pytest.raises(InvalidRequest) as bad:
            async for _ in hark.stream_audio(session.id, sample_rate=7):
                pass
        assert bad.value.field == "sample_rate"
        await hark.end_session(session.id, "bye")
        with pytest.raises(SessionClosed) as closed:
            await hark.stop_listening(session.id)
        assert (closed.value.session_id, closed.value.reason, closed.value.detail) == (
            session.id,
            "API_END",
            "bye",
        )
        await hark.create_session()
        await hark.create_session()
        await hark.create_session()
        with pytest.raises(CapacityExceeded) as full:
            await hark.create_session()
        assert full.value.retry_after_s == 2
    async with running_server(token=TOKEN) as secured, HarkClient(secured.grpc_target) as hark:
        with pytest.raises(Unauthorized):
            await hark.list_sessions()


async def test_the_sdk_never_reads_meaning_into_message_text() -> None:
    """A server without ErrorInfo whose message looks like Hark's gets a plain HarkError."""

    async def closed_lookalike(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION, "session 'x' is CLOSED (API_END): bye"
        )

    handler = grpc.method_handlers_generic_handler(
        "media.v1.MediaService",
        {"GetSession": grpc.unary_unary_rpc_method_handler(closed_lookalike)},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with HarkClient(f"127.0.0.1:{port}") as hark:
            with pytest.raises(HarkError) as caught:
                await hark.get_session("x")
        assert type(caught.value) is HarkError
        assert "FAILED_PRECONDITION" in str(caught.value)
    finally:
        await server.stop(None)
