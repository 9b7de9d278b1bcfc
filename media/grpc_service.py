"""``media.v1.MediaService``: protobuf ⇄ domain, and Hark's errors ⇄ precise gRPC status codes."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from media.errors import (
    CapacityExceeded,
    Draining,
    HarkError,
    InvalidRequest,
    RevisionOutOfRange,
    SessionConflict,
    SessionNotFound,
    SubscriberTooSlow,
    Unauthorized,
)
from media.metrics import Metrics
from media.registry import END, Registry, SnapshotItem, WatchItem, tokens_match
from media.session import (
    CloseReason,
    ListeningChanged,
    Origin,
    SessionEvent,
    SessionSnapshot,
    SessionState,
    StateChanged,
)
from media.speech import (
    STREAM_ENDED,
    Audio,
    AudioMode,
    SegmentEnd,
    SegmentStart,
    StreamItem,
)
from media.v1 import media_pb2 as pb
from media.v1 import media_pb2_grpc
from media.vad import SegmenterConfig, SpeechEnded, SpeechStarted

logger = logging.getLogger(__name__)

SERVICE_NAME: Final = "media.v1.MediaService"
MAX_METADATA_ENTRIES: Final = 64
MAX_METADATA_KEY: Final = 128
MAX_METADATA_VALUE: Final = 1024
MAX_TTL_S: Final = 86400.0
STREAM_SAMPLE_RATES: Final = (8000, 16000, 24000, 32000, 48000)
VAD_OVERRIDES: Final = (
    "start_window_ms",
    "start_ratio",
    "end_silence_ms",
    "end_ratio",
    "pre_roll_ms",
    "min_speech_ms",
    "max_segment_ms",
)

_CODES: Final[list[tuple[type[HarkError], grpc.StatusCode]]] = [
    (SessionNotFound, grpc.StatusCode.NOT_FOUND),
    (SessionConflict, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (RevisionOutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (CapacityExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (SubscriberTooSlow, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Draining, grpc.StatusCode.UNAVAILABLE),
    (Unauthorized, grpc.StatusCode.UNAUTHENTICATED),
]


def code_for(exc: HarkError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.FAILED_PRECONDITION


R = TypeVar("R")


def unary(
    fn: Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> R:
        try:
            return await fn(self, request, context)
        except HarkError as exc:
            await context.abort(code_for(exc), str(exc))
            raise AssertionError("abort returned") from exc

    return wrapper


def streaming(
    fn: Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[R]]:
    @functools.wraps(fn)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[R]:
        try:
            async for item in fn(self, request, context):
                yield item
        except HarkError as exc:
            await context.abort(code_for(exc), str(exc))

    return wrapper


def timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def session_pb(snap: SessionSnapshot, whip_url: str, token: str | None = None) -> pb.Session:
    return pb.Session(
        id=snap.id,
        state=int(snap.state),  # type: ignore[arg-type]
        listening=snap.listening,
        revision=snap.revision,
        created_time=timestamp(snap.created_time),
        ready_time=timestamp(snap.ready_time),
        closed_time=timestamp(snap.closed_time),
        close_reason=int(snap.close_reason or 0),  # type: ignore[arg-type]
        close_detail=snap.close_detail,
        whip_url=whip_url,
        metadata=dict(snap.metadata),
        origin=int(snap.origin),  # type: ignore[arg-type]
        token=token or "",
    )


def event_pb(item: WatchItem, whip_url: str) -> pb.SessionEvent:
    if isinstance(item, SnapshotItem):
        snap = item.snapshot
        return pb.SessionEvent(
            session_id=snap.id,
            revision=snap.revision,
            time=timestamp(snap.closed_time or snap.ready_time or snap.created_time),
            snapshot=pb.Snapshot(session=session_pb(snap, whip_url), resync=item.resync),
        )
    message = pb.SessionEvent(
        session_id=item.session_id, revision=item.revision, time=timestamp(item.time)
    )
    payload = item.payload
    if isinstance(payload, StateChanged):
        message.state_changed.CopyFrom(
            pb.StateChanged(
                state=int(payload.state),  # type: ignore[arg-type]
                previous=int(payload.previous or 0),  # type: ignore[arg-type]
                close_reason=int(payload.close_reason or 0),  # type: ignore[arg-type]
                close_detail=payload.close_detail,
            )
        )
    elif isinstance(payload, ListeningChanged):
        message.listening_changed.CopyFrom(pb.ListeningChanged(listening=payload.listening))
    elif isinstance(payload, SpeechStarted):
        message.speech_started.CopyFrom(
            pb.SpeechStarted(segment_id=payload.segment_id, start_ms=payload.start_ms)
        )
    elif isinstance(payload, SpeechEnded):
        message.speech_ended.CopyFrom(
            pb.SpeechEnded(
                segment_id=payload.segment_id,
                start_ms=payload.start_ms,
                end_ms=payload.end_ms,
                duration_ms=payload.duration_ms,
                reason=int(payload.reason),  # type: ignore[arg-type]
            )
        )
    return message


def chunk_pb(session_id: str, sequence: int, item: StreamItem) -> pb.AudioChunk:
    chunk = pb.AudioChunk(session_id=session_id, sequence=sequence)
    if isinstance(item, Audio):
        chunk.audio.CopyFrom(
            pb.PcmAudio(
                pcm=item.pcm,
                sample_rate=item.sample_rate,
                offset_ms=item.offset_ms,
                duration_ms=item.duration_ms,
                segment_id=item.segment_id,
                voiced=item.voiced,
                dropped_ms=item.dropped_ms,
            )
        )
    elif isinstance(item, SegmentStart):
        chunk.segment_start.CopyFrom(
            pb.SegmentStart(
                segment_id=item.segment_id,
                start_ms=item.start_ms,
                audio_start_ms=item.audio_start_ms,
            )
        )
    elif isinstance(item, SegmentEnd):
        chunk.segment_end.CopyFrom(
            pb.SegmentEnd(
                segment_id=item.segment_id,
                start_ms=item.start_ms,
                end_ms=item.end_ms,
                reason=int(item.reason),  # type: ignore[arg-type]
            )
        )
    return chunk


def vad_overrides(
    options: pb.VadOptions, defaults: SegmenterConfig
) -> tuple[SegmenterConfig | None, int | None]:
    """The segmenter config and aggressiveness a StartListening asks for (None: the defaults)."""
    aggressiveness = None
    if options.HasField("aggressiveness"):
        aggressiveness = options.aggressiveness
        if aggressiveness > 3:
            raise InvalidRequest(
                f"vad.aggressiveness must be between 0 and 3, got {aggressiveness}"
            )
    changes = {name: getattr(options, name) for name in VAD_OVERRIDES if options.HasField(name)}
    if not changes:
        return None, aggressiveness
    try:
        return dataclasses.replace(defaults, **changes), aggressiveness
    except InvalidRequest as exc:
        raise InvalidRequest(f"vad.{exc}") from exc


def is_closed_event(event: SessionEvent) -> bool:
    payload = event.payload
    return isinstance(payload, StateChanged) and payload.state is SessionState.CLOSED


def _session_id(request: Any) -> str:
    session_id = str(request.session_id)
    if not session_id:
        raise InvalidRequest("session_id is required")
    if len(session_id) > 128:
        raise InvalidRequest("session_id is longer than 128 characters")
    return session_id


def _check_metadata(metadata: Mapping[str, str]) -> None:
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidRequest(
            f"metadata has {len(metadata)} entries; at most {MAX_METADATA_ENTRIES}"
        )
    for key, value in metadata.items():
        if not key or len(key) > MAX_METADATA_KEY:
            raise InvalidRequest(f"metadata key {key[:40]!r} must be 1..{MAX_METADATA_KEY} chars")
        if len(value) > MAX_METADATA_VALUE:
            raise InvalidRequest(f"metadata[{key!r}] is longer than {MAX_METADATA_VALUE} chars")


class MediaService(media_pb2_grpc.MediaServiceServicer):
    def __init__(
        self, registry: Registry, *, base_url: Callable[[], str], heartbeat_interval: float
    ) -> None:
        self._registry = registry
        self._base_url = base_url
        self._heartbeat = heartbeat_interval

    def whip_url(self, session_id: str) -> str:
        return f"{self._base_url()}/whip/{session_id}"

    def _pb(self, snap: SessionSnapshot) -> pb.Session:
        return session_pb(snap, self.whip_url(snap.id))

    @unary
    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Session:
        _check_metadata(request.metadata)
        if not 0 <= request.ttl_seconds <= MAX_TTL_S:
            raise InvalidRequest(f"ttl_seconds must be 0..{MAX_TTL_S:g}, got {request.ttl_seconds}")
        entry = self._registry.create(
            Origin.API,
            metadata=dict(request.metadata),
            ttl=request.ttl_seconds or None,
            with_token=True,
        )
        snap = entry.session.snapshot()
        return session_pb(snap, self.whip_url(snap.id), token=entry.token)

    @unary
    async def GetSession(
        self, request: pb.GetSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Session:
        return self._pb(self._registry.lookup(_session_id(request)).session.snapshot())

    @unary
    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListSessionsResponse:
        sessions = [
            self._pb(e.session.snapshot())
            for e in self._registry.entries()
            if request.include_closed or not e.session.closed
        ]
        return pb.ListSessionsResponse(sessions=sessions)

    @unary
    async def EndSession(
        self, request: pb.EndSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Session:
        detail = request.detail[:256] or "ended through the API"
        return self._pb(self._registry.close(_session_id(request), CloseReason.API_END, detail))

    @unary
    async def StartListening(
        self, request: pb.StartListeningRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Session:
        session_id = _session_id(request)
        session = self._registry.lookup(session_id).session
        segmenter, aggressiveness = vad_overrides(request.vad, self._registry.speech.segmenter)
        if request.wait_for_ready and session.state is not SessionState.READY:
            remaining = context.time_remaining()
            timeout = None if remaining is None else max(0.0, remaining - 0.05)
            try:
                await asyncio.wait_for(self._registry.wait_ready(session_id), timeout)
            except TimeoutError:
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"session {session_id!r} is still {session.state.name}, not READY, "
                    "at the call's deadline",
                )
        return self._pb(self._registry.start_listening(session_id, segmenter, aggressiveness))

    @unary
    async def StopListening(
        self, request: pb.StopListeningRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Session:
        return self._pb(self._registry.stop_listening(_session_id(request)))

    @streaming
    async def WatchSession(
        self, request: pb.WatchSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SessionEvent]:
        session_id = _session_id(request)
        whip_url = self.whip_url(session_id)
        initial, sub = self._registry.subscribe(session_id, request.since_revision)
        gauge = self._registry.metrics.watch_streams
        gauge.inc()
        try:
            for item in initial:
                yield event_pb(item, whip_url)
            if sub is None:
                return
            while True:
                event = await sub.get(self._heartbeat)
                if event is END:
                    return
                if event is None:
                    yield self._heartbeat_pb(session_id, sub.delivered_revision)
                    continue
                assert isinstance(event, SessionEvent)
                yield event_pb(event, whip_url)
                if is_closed_event(event):
                    return
        finally:
            gauge.dec()
            if sub is not None:
                self._registry.unsubscribe(session_id, sub)

    @streaming
    async def WatchSessions(
        self, request: pb.WatchSessionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SessionEvent]:
        initial, sub = self._registry.subscribe_all(request.include_closed)
        gauge = self._registry.metrics.watch_streams
        gauge.inc()
        try:
            for item in initial:
                sid = item.snapshot.id if isinstance(item, SnapshotItem) else item.session_id
                yield event_pb(item, self.whip_url(sid))
            while True:
                event = await sub.get(self._heartbeat)
                if event is END:
                    return
                if event is None:
                    yield self._heartbeat_pb("", 0)
                    continue
                assert isinstance(event, SessionEvent)
                yield event_pb(event, self.whip_url(event.session_id))
        finally:
            gauge.dec()
            self._registry.unsubscribe_all(sub)

    @streaming
    async def StreamAudio(
        self, request: pb.StreamAudioRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.AudioChunk]:
        session_id = _session_id(request)
        if request.mode not in (0, AudioMode.SPEECH, AudioMode.ALL):
            raise InvalidRequest(f"mode {request.mode} is not an AudioMode (SPEECH=1, ALL=2)")
        if request.sample_rate and request.sample_rate not in STREAM_SAMPLE_RATES:
            rates = ", ".join(map(str, STREAM_SAMPLE_RATES))
            raise InvalidRequest(
                f"sample_rate must be 0 or one of {rates}, got {request.sample_rate}"
            )
        pipeline = self._registry.lookup_open(session_id).audio
        subscriber = pipeline.subscribe(
            AudioMode(request.mode or AudioMode.SPEECH), request.sample_rate
        )
        sequence = 0
        gauge = self._registry.metrics.audio_subscribers
        gauge.inc()
        try:
            while (item := await subscriber.get()) is not STREAM_ENDED:
                sequence += 1
                yield chunk_pb(session_id, sequence, item)
        finally:
            gauge.dec()
            pipeline.unsubscribe(subscriber)

    def _heartbeat_pb(self, session_id: str, revision: int) -> pb.SessionEvent:
        return pb.SessionEvent(
            session_id=session_id,
            revision=revision,
            time=timestamp(self._registry.clock.now()),
            heartbeat=pb.Heartbeat(),
        )


def _status(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> str:
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return "UNKNOWN"
    return "OK"


class RpcMetrics(grpc.aio.ServerInterceptor):
    """Counts every call by method and status code, and times unary calls."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        requests, durations = self._metrics.grpc_requests, self._metrics.grpc_duration
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            inner: Any = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                start = time.perf_counter()
                error: BaseException | None = None
                try:
                    return await inner(request, context)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    requests.labels(method, _status(context, error)).inc()
                    durations.labels(method).observe(time.perf_counter() - start)

            return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
        if handler.unary_stream:
            inner_stream: Any = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                error: BaseException | None = None
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    requests.labels(method, _status(context, error)).inc()

            return grpc.unary_stream_rpc_method_handler(stream, **kwargs)
        return handler


class BearerAuth(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` metadata; health and reflection are exempt."""

    EXEMPT: Final = ("/grpc.health.v1.Health/", "/grpc.reflection.")

    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(self.EXEMPT):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        header = str(metadata.get("authorization", ""))
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and tokens_match(given.strip(), self._token):
            return handler
        message = (
            "missing bearer token: send 'authorization: Bearer <token>' metadata"
            if not header
            else "wrong bearer token"
        )
        return _denied(handler, message)


def _denied(
    handler: grpc.RpcMethodHandler[Any, Any], message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    async def deny_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def deny_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield None  # pragma: no cover

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(deny_unary, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny_unary, **kwargs)
    return grpc.stream_stream_rpc_method_handler(deny_stream, **kwargs)
