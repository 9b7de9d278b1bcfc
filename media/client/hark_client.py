"""An asyncio client for Hark's gRPC API that gets readiness and reconnects right.

    async with HarkClient("127.0.0.1:50051", token=...) as hark:
        session = await hark.create_session()
        ...publish to session.whip_url with session.token...
        await hark.start_listening(session.id, wait_for_ready=True, timeout=10)
        async for event in hark.watch(session.id):
            ...

StreamAudio and PlayAudio go straight to the node that owns the session (``Session.grpc_address``,
asked once per owner) when it can be reached from here, else through ``target``, which forwards.
``watch`` survives dropped connections: it reconnects with exponential backoff and jitter and
resumes with ``since_revision``, so the caller sees every event of the session exactly once and in
order. Errors are Hark's own (``media.errors``), never a bare gRPC error.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import grpc
from google.rpc.error_details_pb2 import ErrorInfo
from grpc_status import rpc_status

from media.core.session_ids import Owner, owner_of
from media.errors import ERROR_DOMAIN, HarkError, SessionClosed, Unauthorized, by_reason
from media.v1 import media_pb2 as pb
from media.v1 import media_pb2_grpc

OWNER_CONNECT_TIMEOUT_S: Final = 2.0
RETRYABLE: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL}
)


class ConnectionLost(HarkError):
    """``watch`` gave up reconnecting after ``Backoff.max_attempts``."""

    REASON = "CONNECTION_LOST"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: ``initial`` growing by ``multiplier`` up to ``maximum`` seconds, each
    spread by ±``jitter`` (a fraction); ``max_attempts`` consecutive failures end the watch
    (``None``: never give up)."""

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_attempts: int | None = 20

    def delays(self) -> AsyncIterator[float]:
        return _delays(self)


async def _delays(backoff: Backoff) -> AsyncIterator[float]:
    delay = backoff.initial
    attempt = 0
    while backoff.max_attempts is None or attempt < backoff.max_attempts:
        attempt += 1
        yield delay * (1 + random.uniform(-backoff.jitter, backoff.jitter))
        delay = min(backoff.maximum, delay * backoff.multiplier)


def _error_info(error: grpc.aio.AioRpcError) -> ErrorInfo | None:
    """The ``ErrorInfo`` of Hark's domain in the error's status details, if there is one."""
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        info = ErrorInfo()
        if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
            return info
    return None


def _translate(error: grpc.aio.AioRpcError) -> HarkError:
    """The ``media.errors`` exception the server named in its ``ErrorInfo``; a generic
    ``HarkError`` (``Unauthorized`` for UNAUTHENTICATED) from a server that sent none."""
    details = error.details() or ""
    info = _error_info(error)
    kind = by_reason(info.reason) if info is not None else None
    if info is not None and kind is not None:
        return kind.from_error_info(details, info.metadata)
    if error.code() == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthorized(details)
    return HarkError(f"{error.code().name}: {details}")


def _closed_event(event: pb.SessionEvent) -> bool:
    return event.HasField("state_changed") and event.state_changed.state == pb.CLOSED


class HarkClient:
    def __init__(
        self,
        target: str,
        token: str | None = None,
        tls: grpc.ChannelCredentials | None = None,
        backoff: Backoff = Backoff(),
        *,
        direct: bool = True,
    ) -> None:
        options = [
            ("grpc.initial_reconnect_backoff_ms", int(backoff.initial * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(backoff.initial * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(backoff.maximum * 1000)),
        ]
        self._tls = tls
        self._options = options
        self._channel = self._open(target)
        self._stub = media_pb2_grpc.MediaServiceStub(self._channel)
        self.direct = direct
        # The data plane's stub per owner (absent until asked): the entry stub when the owner
        # is this target or cannot be reached from here.
        self._owner_stubs: dict[Owner, media_pb2_grpc.MediaServiceAsyncStub] = {}
        self._owner_channels: list[grpc.aio.Channel] = []
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.backoff = backoff
        self.target = target

    async def __aenter__(self) -> HarkClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _open(self, target: str) -> grpc.aio.Channel:
        if self._tls is None:
            return grpc.aio.insecure_channel(target, options=self._options)
        return grpc.aio.secure_channel(target, self._tls, options=self._options)

    async def close(self) -> None:
        await self._channel.close()
        for channel in self._owner_channels:
            await channel.close()

    async def _data_stub(self, session_id: str) -> media_pb2_grpc.MediaServiceAsyncStub:
        """The stub that reaches ``session_id``'s owner most directly."""
        owner = owner_of(session_id)
        if not self.direct or owner is None:
            return self._stub
        if owner not in self._owner_stubs:
            address = (await self.get_session(session_id)).grpc_address
            self._owner_stubs[owner] = await self._reach(address)
        return self._owner_stubs[owner]

    async def _reach(self, address: str) -> media_pb2_grpc.MediaServiceAsyncStub:
        if not address or address == self.target:
            return self._stub
        channel = self._open(address)
        try:
            await asyncio.wait_for(channel.channel_ready(), OWNER_CONNECT_TIMEOUT_S)
        except TimeoutError:
            await channel.close()
            return self._stub  # not reachable from here: the entry node forwards
        self._owner_channels.append(channel)
        return media_pb2_grpc.MediaServiceStub(channel)

    async def _call(self, method: str, request: Any, stub: Any = None, **kwargs: Any) -> Any:
        try:
            call = getattr(stub or self._stub, method)
            return await call(request, metadata=self._metadata, **kwargs)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise TimeoutError(error.details()) from error
            raise _translate(error) from error

    # sessions

    async def create_session(
        self, metadata: Mapping[str, str] | None = None, ttl_seconds: float = 0.0
    ) -> pb.Session:
        request = pb.CreateSessionRequest(metadata=dict(metadata or {}), ttl_seconds=ttl_seconds)
        session: pb.Session = await self._call("CreateSession", request)
        return session

    async def get_session(self, session_id: str) -> pb.Session:
        request = pb.GetSessionRequest(session_id=session_id)
        session: pb.Session = await self._call("GetSession", request)
        return session

    async def list_sessions(self, include_closed: bool = False) -> list[pb.Session]:
        request = pb.ListSessionsRequest(include_closed=include_closed)
        response: pb.ListSessionsResponse = await self._call("ListSessions", request)
        return list(response.sessions)

    async def end_session(self, session_id: str, detail: str = "") -> pb.Session:
        request = pb.EndSessionRequest(session_id=session_id, detail=detail)
        session: pb.Session = await self._call("EndSession", request)
        return session

    # readiness and listening

    async def wait_ready(self, session_id: str, timeout: float) -> pb.Session:
        """The session once READY; ``SessionClosed`` if it closes first; ``TimeoutError``."""
        async with asyncio.timeout(timeout):
            async for event in self.watch(session_id):
                state = (
                    event.snapshot.session.state
                    if event.HasField("snapshot")
                    else event.state_changed.state
                    if event.HasField("state_changed")
                    else None
                )
                if state == pb.READY:
                    return await self.get_session(session_id)
                if state == pb.CLOSED:
                    session = await self.get_session(session_id)
                    raise SessionClosed(
                        session_id,
                        pb.CloseReason.Name(session.close_reason),
                        session.close_detail,
                    )
        raise SessionClosed(session_id, "UNKNOWN", "the watch ended before READY")

    async def start_listening(
        self,
        session_id: str,
        *,
        wait_for_ready: bool = True,
        timeout: float | None = None,
        vad: pb.VadOptions | None = None,
    ) -> pb.Session:
        request = pb.StartListeningRequest(
            session_id=session_id, wait_for_ready=wait_for_ready, vad=vad
        )
        session: pb.Session = await self._call("StartListening", request, timeout=timeout)
        return session

    async def stop_listening(self, session_id: str) -> pb.Session:
        request = pb.StopListeningRequest(session_id=session_id)
        session: pb.Session = await self._call("StopListening", request)
        return session

    # streams

    async def watch(
        self,
        session_id: str | None = None,
        since_revision: int = 0,
        *,
        on_retry: Callable[[str], None] | None = None,
    ) -> AsyncIterator[pb.SessionEvent]:
        """Every event of one session (or of all of them), heartbeats left out.

        One session: exactly once and in order across reconnects; ends after CLOSED.
        All sessions (of every node of the cluster): a reconnect resumes with the resume token of
        the last message, so every event comes exactly once too; where the server can no longer
        replay what was missed, snapshots marked ``resync`` stand for it.
        ``on_retry`` is called with the error each time a connection fails and is retried.
        """
        last_error = "the stream ended"
        resume_token = ""
        seen: dict[str, int] = {}
        if session_id is not None and since_revision:
            seen[session_id] = since_revision
        delays = self.backoff.delays()
        while True:
            call: grpc.aio.UnaryStreamCall[Any, pb.SessionEvent]
            if session_id is None:
                call = self._stub.WatchSessions(
                    pb.WatchSessionsRequest(resume_token=resume_token), metadata=self._metadata
                )
            else:
                request = pb.WatchSessionRequest(
                    session_id=session_id, since_revision=seen.get(session_id, 0)
                )
                call = self._stub.WatchSession(request, metadata=self._metadata)
            try:
                async for event in call:
                    delays = self.backoff.delays()
                    resume_token = event.resume_token or resume_token
                    if event.HasField("heartbeat"):
                        continue
                    last = seen.get(event.session_id, 0)
                    if not event.HasField("snapshot") and event.revision <= last:
                        continue
                    seen[event.session_id] = max(last, event.revision)
                    yield event
                    if session_id is not None and _closed_event(event):
                        return
                if session_id is not None:
                    return
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE:
                    raise _translate(error) from error
                last_error = error.details() or error.code().name
                if on_retry is not None:
                    on_retry(last_error)
            finally:
                call.cancel()
            try:
                await asyncio.sleep(await anext(delays))
            except StopAsyncIteration:
                raise ConnectionLost(
                    f"gave up reconnecting to {self.target} after {self.backoff.max_attempts} "
                    f"attempts (last error: {last_error})"
                ) from None

    async def stream_audio(
        self, session_id: str, mode: int = pb.SPEECH, sample_rate: int = 0, chunk_ms: int = 0
    ) -> AsyncIterator[pb.AudioChunk]:
        """The session's speech as PCM chunks of up to ``chunk_ms`` (see StreamAudio; 0: the
        server's default); ends when the session closes."""
        request = pb.StreamAudioRequest(
            session_id=session_id,
            mode=mode,  # type: ignore[arg-type]
            sample_rate=sample_rate,
            chunk_ms=chunk_ms,
        )
        stub = await self._data_stub(session_id)
        call = stub.StreamAudio(request, metadata=self._metadata)
        try:
            async for chunk in call:
                yield chunk
        except grpc.aio.AioRpcError as error:
            raise _translate(error) from error
        finally:
            call.cancel()

    # agent audio

    async def play(
        self,
        session_id: str,
        pcm: AsyncIterable[bytes] | Iterable[bytes],
        sample_rate: int,
        *,
        channels: int = 1,
        replace: bool = False,
        interrupt_on_speech: bool = True,
        playback_id: str = "",
    ) -> pb.PlayAudioResponse:
        """Play 16-bit PCM chunks to the session's WHEP players (see PlayAudio).

        Returns when the playback has finished or was cut; ``interrupted`` and
        ``interrupt_reason`` say which (``USER_SPEECH`` for a barge-in).
        """
        start = pb.PlayAudioStart(
            session_id=session_id,
            sample_rate=sample_rate,
            channels=channels,
            mode=pb.REPLACE if replace else pb.ENQUEUE,
            interrupt_on_speech=interrupt_on_speech,
            playback_id=playback_id,
        )

        async def requests() -> AsyncIterator[pb.PlayAudioRequest]:
            yield pb.PlayAudioRequest(start=start)
            if isinstance(pcm, AsyncIterable):
                async for chunk in pcm:
                    yield pb.PlayAudioRequest(pcm=chunk)
            else:
                for chunk in pcm:
                    yield pb.PlayAudioRequest(pcm=chunk)

        stub = await self._data_stub(session_id)
        response: pb.PlayAudioResponse = await self._call("PlayAudio", requests(), stub)
        return response

    async def stop_playback(self, session_id: str) -> list[str]:
        """Cut what is queued or playing for the session; the ids of the playbacks cut."""
        request = pb.StopPlaybackRequest(session_id=session_id)
        response = await self._call("StopPlayback", request)
        return list(response.playback_ids)
