"""``media.v1.MediaService``: each RPC, from protobuf to the session table and back (protobuf
conversion is in ``media.rpc.messages``, errors become statuses in ``media.rpc.error_status``)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any, Final

import grpc

from media.aio import cancel_and_wait
from media.audio.pcm import PcmConverter
from media.audio.subscribers import CHUNK_MS_RANGE, DEFAULT_CHUNK_MS, STREAM_ENDED, AudioMode
from media.core.event_log import decode_token, encode_token
from media.core.events import CloseReason, InterruptReason
from media.core.playback_queue import RATE, Playback, PlaybackMode, check_playback_id
from media.core.segmenter import SegmenterConfig
from media.core.session import Origin, SessionSnapshot
from media.errors import (
    HarkError,
    InvalidRequest,
)
from media.rpc.error_status import streaming, unary
from media.rpc.messages import (
    chunk_pb,
    event_pb,
    session_pb,
    timestamp,
)
from media.rtc.agent_voice import AgentVoice
from media.server.session_table import SessionTable
from media.server.watch import SnapshotItem
from media.v1 import media_pb2 as pb
from media.v1 import media_pb2_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME: Final = "media.v1.MediaService"
MAX_METADATA_ENTRIES: Final = 64
MAX_METADATA_KEY: Final = 128
MAX_METADATA_VALUE: Final = 1024
MAX_TTL_S: Final = 86400.0
STREAM_SAMPLE_RATES: Final = (8000, 16000, 24000, 32000, 48000)
PLAY_RATE_RANGE: Final = (8000, 48000)
VAD_OVERRIDES: Final = (
    "start_window_ms",
    "start_ratio",
    "end_silence_ms",
    "end_ratio",
    "pre_roll_ms",
    "min_speech_ms",
    "max_segment_ms",
)


def vad_overrides(
    options: pb.VadOptions, defaults: SegmenterConfig
) -> tuple[SegmenterConfig | None, int | None]:
    """The segmenter config and aggressiveness a StartListening asks for (None: the defaults)."""
    aggressiveness = None
    if options.HasField("aggressiveness"):
        aggressiveness = options.aggressiveness
        if aggressiveness > 3:
            raise InvalidRequest(
                f"vad.aggressiveness must be between 0 and 3, got {aggressiveness}",
                "vad.aggressiveness",
            )
    changes = {name: getattr(options, name) for name in VAD_OVERRIDES if options.HasField(name)}
    if not changes:
        return None, aggressiveness
    try:
        return dataclasses.replace(defaults, **changes), aggressiveness
    except InvalidRequest as exc:
        raise InvalidRequest(f"vad.{exc}", "vad") from exc


async def _feed(
    messages: AsyncIterator[pb.PlayAudioRequest],
    voice: AgentVoice,
    playback: Playback,
    converter: PcmConverter,
) -> None:
    """Queue the PCM of a PlayAudio stream until it ends, waiting while the queue is full."""
    index = 1  # the start was message 1
    async for message in messages:
        index += 1
        if message.WhichOneof("payload") != "pcm":
            raise InvalidRequest(
                f"PlayAudio message {index} is not pcm: only the first message is a start",
                "start",
            )
        if len(message.pcm) % converter.frame_bytes:
            raise InvalidRequest(
                f"PlayAudio message {index} has {len(message.pcm)} bytes, not a whole number "
                f"of 16-bit {'stereo ' if converter.frame_bytes == 4 else ''}samples "
                f"({converter.frame_bytes} bytes each)",
                "pcm",
            )
        # A message may hold tens of seconds of audio: converted a slice at a time, so the event
        # loop (every session's 20 ms playout) never waits on one big resample.
        for offset in range(0, len(message.pcm), converter.slice_bytes):
            pcm = message.pcm[offset : offset + converter.slice_bytes]
            voice.feed(playback, converter.convert(pcm))
            await voice.wait_for_room(playback)
            await asyncio.sleep(0)
    voice.feed(playback, converter.flush())


def _session_id(request: Any, field: str = "session_id") -> str:
    session_id = str(request.session_id)
    if not session_id:
        raise InvalidRequest(f"{field} is required", field)
    if len(session_id) > 128:
        raise InvalidRequest(f"{field} is longer than 128 characters", field)
    return session_id


def _check_metadata(metadata: Mapping[str, str]) -> None:
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidRequest(
            f"metadata has {len(metadata)} entries; at most {MAX_METADATA_ENTRIES}", "metadata"
        )
    for key, value in metadata.items():
        if not key or len(key) > MAX_METADATA_KEY:
            raise InvalidRequest(
                f"metadata key {key[:40]!r} must be 1..{MAX_METADATA_KEY} chars", "metadata"
            )
        if len(value) > MAX_METADATA_VALUE:
            raise InvalidRequest(
                f"metadata[{key[:40]!r}] is longer than {MAX_METADATA_VALUE} chars", "metadata"
            )


class MediaService(media_pb2_grpc.MediaServiceServicer):
    def __init__(
        self,
        sessions: SessionTable,
        *,
        base_url: Callable[[], str],
        heartbeat_interval: float,
        grpc_address: Callable[[], str] = str,
    ) -> None:
        self._sessions = sessions
        self._base_url = base_url
        self._heartbeat = heartbeat_interval
        self._grpc_address = grpc_address

    def whip_url(self, session_id: str) -> str:
        return f"{self._base_url()}/whip/{session_id}"

    def _pb(self, snap: SessionSnapshot) -> pb.Session:
        return session_pb(snap, self.whip_url(snap.id), grpc_address=self._grpc_address())

    @unary
    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Session:
        _check_metadata(request.metadata)
        if not 0 <= request.ttl_seconds <= MAX_TTL_S:
            raise InvalidRequest(
                f"ttl_seconds must be 0..{MAX_TTL_S:g}, got {request.ttl_seconds}", "ttl_seconds"
            )
        live = self._sessions.create(
            Origin.API,
            metadata=dict(request.metadata),
            ttl=request.ttl_seconds or None,
            with_token=True,
        )
        snap = live.snapshot()
        return session_pb(
            snap, self.whip_url(snap.id), token=live.token, grpc_address=self._grpc_address()
        )

    @unary
    async def GetSession(
        self, request: pb.GetSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Session:
        return self._pb(self._sessions.get(_session_id(request)).snapshot())

    @unary
    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListSessionsResponse:
        sessions = [
            self._pb(live.snapshot())
            for live in self._sessions.all()
            if request.include_closed or not live.closed
        ]
        return pb.ListSessionsResponse(sessions=sessions)

    @unary
    async def EndSession(
        self, request: pb.EndSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Session:
        detail = request.detail[:256] or "ended through the API"
        return self._pb(self._sessions.close(_session_id(request), CloseReason.API_END, detail))

    @unary
    async def StartListening(
        self, request: pb.StartListeningRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Session:
        session_id = _session_id(request)
        self._sessions.get(session_id)
        segmenter, aggressiveness = vad_overrides(request.vad, self._sessions.speech.segmenter)
        remaining = context.time_remaining()
        snapshot = await self._sessions.start_listening(
            session_id,
            wait=request.wait_for_ready,
            wait_limit=None if remaining is None else max(0.0, remaining - 0.05),
            segmenter=segmenter,
            aggressiveness=aggressiveness,
        )
        return self._pb(snapshot)

    @unary
    async def StopListening(
        self, request: pb.StopListeningRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Session:
        return self._pb(self._sessions.stop_listening(_session_id(request)))

    @streaming
    async def WatchSession(
        self, request: pb.WatchSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SessionEvent]:
        session_id = _session_id(request)
        whip_url = self.whip_url(session_id)
        since = request.since_revision
        with self._sessions.watch(session_id, since, heartbeat_s=self._heartbeat) as watch:
            async for item in watch:
                if item is None:
                    yield self._heartbeat_pb(session_id, watch.delivered_revision)
                else:
                    yield event_pb(item, whip_url, grpc_address=self._grpc_address())

    @streaming
    async def WatchSessions(
        self, request: pb.WatchSessionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SessionEvent]:
        async for message in self.watch_here(request):
            yield message

    async def watch_here(
        self, request: pb.WatchSessionsRequest, *, announce: bool = False
    ) -> AsyncGenerator[pb.SessionEvent, None]:
        """WatchSessions over this process's sessions only, each message with its resume token
        (``announce``: say where the stream stands at once, even with no session to show)."""
        positions = decode_token(request.resume_token)
        owner = str(self._sessions.owner)
        with self._sessions.watch_everything(
            positions.get(owner),
            fresh=not positions,
            include_closed=request.include_closed,
            heartbeat_s=self._heartbeat,
            announce=announce,
        ) as watch:
            async for fed in watch:
                item = fed.item
                if item is None:
                    message = self._heartbeat_pb("", 0)
                else:
                    sid = item.snapshot.id if isinstance(item, SnapshotItem) else item.session_id
                    message = event_pb(item, self.whip_url(sid), grpc_address=self._grpc_address())
                message.resume_token = encode_token({owner: fed.position})
                yield message

    @unary
    async def StreamAudio(  # type: ignore[override]  # written with context.write (see below)
        self, request: pb.StreamAudioRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        session_id = _session_id(request)
        if request.mode not in (0, AudioMode.SPEECH, AudioMode.ALL):
            raise InvalidRequest(
                f"mode {request.mode} is not an AudioMode (SPEECH=1, ALL=2)", "mode"
            )
        if request.sample_rate and request.sample_rate not in STREAM_SAMPLE_RATES:
            rates = ", ".join(map(str, STREAM_SAMPLE_RATES))
            raise InvalidRequest(
                f"sample_rate must be 0 or one of {rates}, got {request.sample_rate}",
                "sample_rate",
            )
        low, high = CHUNK_MS_RANGE
        if request.chunk_ms and not low <= request.chunk_ms <= high:
            raise InvalidRequest(
                f"chunk_ms must be 0 or {low}..{high}, got {request.chunk_ms}", "chunk_ms"
            )
        pipeline = self._sessions.get_open(session_id).pipeline
        subscriber = pipeline.subscribe(
            AudioMode(request.mode or AudioMode.SPEECH),
            request.sample_rate,
            request.chunk_ms or DEFAULT_CHUNK_MS,
        )
        # context.write, not yield: an async generator would pass each message up through the
        # error and interceptor wrappers' generators too (about 4 µs a message).
        sequence = 0
        gauge = self._sessions.metrics.audio_subscribers
        gauge.inc()
        try:
            while (item := await subscriber.get()) is not STREAM_ENDED:
                sequence += 1
                await context.write(chunk_pb(session_id, sequence, item))
        finally:
            gauge.dec()
            pipeline.unsubscribe(subscriber)

    @unary
    async def PlayAudio(
        self,
        request_iterator: AsyncIterator[pb.PlayAudioRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.PlayAudioResponse:
        messages = aiter(request_iterator)
        first = await anext(messages, None)
        if first is None or first.WhichOneof("payload") != "start":
            got = (
                "nothing" if first is None else (first.WhichOneof("payload") or "an empty message")
            )
            raise InvalidRequest(
                f"the first PlayAudio message must be a start (session_id, sample_rate), got {got}",
                "start",
            )
        start = first.start
        session_id = _session_id(start, "start.session_id")
        low, high = PLAY_RATE_RANGE
        if not low <= start.sample_rate <= high:
            raise InvalidRequest(
                f"start.sample_rate must be {low}..{high} Hz, got {start.sample_rate}",
                "start.sample_rate",
            )
        channels = start.channels or 1
        if channels not in (1, 2):
            raise InvalidRequest(
                f"start.channels must be 1 or 2, got {start.channels}", "start.channels"
            )
        if start.mode not in (0, *PlaybackMode):
            raise InvalidRequest(
                f"start.mode {start.mode} is not a PlaybackMode (ENQUEUE=1, REPLACE=2)",
                "start.mode",
            )
        try:
            check_playback_id(start.playback_id)
        except InvalidRequest as exc:
            raise InvalidRequest(str(exc), "start.playback_id") from exc
        interrupt = start.interrupt_on_speech if start.HasField("interrupt_on_speech") else True
        converter = PcmConverter(start.sample_rate, channels, RATE)
        voice = self._sessions.get_open(session_id).voice
        playback = voice.begin(
            PlaybackMode(start.mode or PlaybackMode.ENQUEUE), interrupt, start.playback_id
        )
        reading = asyncio.ensure_future(_feed(messages, voice, playback, converter))
        ended = asyncio.ensure_future(voice.wait_result(playback))
        try:
            # A barge-in ends the call at once, even while the caller is between chunks.
            await asyncio.wait((reading, ended), return_when=asyncio.FIRST_COMPLETED)
            if reading.done():
                try:
                    reading.result()
                except HarkError:
                    voice.fail(playback)  # the caller hears its error, the user nothing more
                    raise
        finally:
            await cancel_and_wait(reading, ended)
            voice.end_input(playback)
        result = await voice.wait_result(playback)
        return pb.PlayAudioResponse(
            playback_id=result.playback_id,
            played_ms=result.played_ms,
            interrupted=result.interrupted is not None,
            interrupt_reason=int(result.interrupted or 0),  # type: ignore[arg-type]
        )

    @unary
    async def StopPlayback(
        self, request: pb.StopPlaybackRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.StopPlaybackResponse:
        voice = self._sessions.get_open(_session_id(request)).voice
        return pb.StopPlaybackResponse(playback_ids=voice.interrupt(InterruptReason.STOP_PLAYBACK))

    def _heartbeat_pb(self, session_id: str, revision: int) -> pb.SessionEvent:
        return pb.SessionEvent(
            session_id=session_id,
            revision=revision,
            time=timestamp(self._sessions.clock.now()),
            heartbeat=pb.Heartbeat(),
        )
