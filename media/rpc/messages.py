"""Domain objects → media.v1 protobuf messages (for gRPC and the SSE mirror alike)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc.error_details_pb2 import ErrorInfo

from media.audio.subscribers import Audio, SegmentEnd, SegmentStart, StreamItem
from media.core.events import (
    ListeningChanged,
    PlaybackFinished,
    PlaybackInterrupted,
    PlaybackStarted,
    SpeechEnded,
    SpeechStarted,
    StateChanged,
)
from media.core.session import SessionSnapshot
from media.core.session_ids import owner_of
from media.errors import ERROR_DOMAIN, HarkError
from media.server.watch import SnapshotItem, WatchItem
from media.v1 import media_pb2 as pb


def error_info_pb(error: HarkError) -> ErrorInfo:
    """The ``google.rpc.ErrorInfo`` a gRPC status carries for ``error``."""
    return ErrorInfo(reason=error.REASON, domain=ERROR_DOMAIN, metadata=error.error_metadata())


def timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def session_pb(
    snap: SessionSnapshot, whip_url: str, token: str | None = None, *, grpc_address: str = ""
) -> pb.Session:
    owner = owner_of(snap.id)
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
        node=owner.node if owner is not None else "",
        grpc_address=grpc_address,
    )


def event_pb(item: WatchItem, whip_url: str, *, grpc_address: str = "") -> pb.SessionEvent:
    if isinstance(item, SnapshotItem):
        snap = item.snapshot
        return pb.SessionEvent(
            session_id=snap.id,
            revision=snap.revision,
            time=timestamp(snap.closed_time or snap.ready_time or snap.created_time),
            snapshot=pb.Snapshot(
                session=session_pb(snap, whip_url, grpc_address=grpc_address),
                resync=item.resync,
            ),
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
    elif isinstance(payload, PlaybackStarted):
        message.playback_started.CopyFrom(
            pb.PlaybackStarted(playback_id=payload.playback_id, players=payload.players)
        )
    elif isinstance(payload, PlaybackFinished):
        message.playback_finished.CopyFrom(
            pb.PlaybackFinished(playback_id=payload.playback_id, played_ms=payload.played_ms)
        )
    elif isinstance(payload, PlaybackInterrupted):
        message.playback_interrupted.CopyFrom(
            pb.PlaybackInterrupted(
                playback_id=payload.playback_id,
                played_ms=payload.played_ms,
                reason=int(payload.reason),  # type: ignore[arg-type]
            )
        )
    return message


def chunk_pb(session_id: str, sequence: int, item: StreamItem) -> pb.AudioChunk:
    chunk = pb.AudioChunk(session_id=session_id, sequence=sequence)
    if isinstance(item, Audio):
        # Field by field into the chunk's own submessage: no PcmAudio built and then copied.
        audio = chunk.audio
        audio.pcm = item.pcm
        audio.sample_rate = item.sample_rate
        audio.offset_ms = item.offset_ms
        audio.duration_ms = item.duration_ms
        audio.segment_id = item.segment_id
        audio.voiced = item.voiced
        audio.dropped_ms = item.dropped_ms
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
