"""StreamAudio ``chunk_ms`` over a real gRPC server and a real aiortc publisher of the fixture."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc.error_details_pb2 import ErrorInfo
from grpc_status import rpc_status

from media.client.hark_client import HarkClient
from media.v1 import media_pb2 as pb
from tests.support import eventually, grpc_stub, publish, running_server, truth

UTTERANCES = len(truth()["utterances"])
FIXTURE_S = truth()["duration_ms"] / 1000


def by_segment(chunks: list[pb.AudioChunk]) -> list[tuple[pb.SegmentStart, list[pb.PcmAudio]]]:
    segments: list[tuple[pb.SegmentStart, list[pb.PcmAudio]]] = []
    for chunk in chunks:
        kind = chunk.WhichOneof("payload")
        if kind == "segment_start":
            segments.append((chunk.segment_start, []))
        elif kind == "audio":
            assert chunk.audio.segment_id == segments[-1][0].segment_id
            segments[-1][1].append(chunk.audio)
    return segments


def markers(chunks: list[pb.AudioChunk]) -> list[pb.AudioChunk]:
    return [c for c in chunks if c.WhichOneof("payload") != "audio"]


async def collect(stream: AsyncIterator[pb.AudioChunk], into: list[pb.AudioChunk]) -> None:
    async for chunk in stream:
        into.append(chunk)


async def test_chunks_of_100_ms_carry_the_same_audio_and_segments_as_chunks_of_20() -> None:
    async with (
        running_server() as app,
        grpc_stub(app) as stub,
        HarkClient(app.grpc_target) as hark,
    ):
        created = await stub.CreateSession(pb.CreateSessionRequest())
        small: list[pb.AudioChunk] = []
        large: list[pb.AudioChunk] = []
        odd: list[pb.AudioChunk] = []
        request = pb.StreamAudioRequest(session_id=created.id, chunk_ms=20)
        readers = [
            asyncio.ensure_future(collect(stub.StreamAudio(request), small)),
            asyncio.ensure_future(collect(hark.stream_audio(created.id, chunk_ms=100), large)),
            asyncio.ensure_future(collect(hark.stream_audio(created.id, chunk_ms=140), odd)),
        ]
        publisher = await publish(app.base_url, f"/whip/{created.id}", token=created.token)
        try:
            await stub.StartListening(
                pb.StartListeningRequest(session_id=created.id, wait_for_ready=True), timeout=10
            )
            await eventually(
                lambda: min(len(markers(c)) for c in (small, large, odd)) >= 2 * UTTERANCES,
                "every utterance ends in both streams",
                timeout=FIXTURE_S + 20,
            )
            await stub.EndSession(pb.EndSessionRequest(session_id=created.id))
            await asyncio.wait_for(asyncio.gather(*readers), 10)
        finally:
            for reader in readers:
                reader.cancel()
            await publisher.vanish()

    def marker_fields(chunks: list[pb.AudioChunk]) -> list[tuple[str, bytes]]:
        return [
            (kind, getattr(c, kind).SerializeToString())
            for c in markers(chunks)
            if (kind := c.WhichOneof("payload")) is not None
        ]

    assert marker_fields(large) == marker_fields(small)
    assert [c.sequence for c in large] == list(range(1, len(large) + 1))
    segments_small, segments_large = by_segment(small), by_segment(large)
    assert len(segments_large) >= UTTERANCES
    for (start, audio_small), (_, audio_large) in zip(segments_small, segments_large, strict=True):
        assert b"".join(a.pcm for a in audio_large) == b"".join(a.pcm for a in audio_small)
        # the segment's first audio, its pre-roll, begins where the 20 ms stream's does
        assert audio_large[0].offset_ms == audio_small[0].offset_ms == start.audio_start_ms
        for before, after in zip(audio_large, audio_large[1:], strict=False):
            assert after.offset_ms == before.offset_ms + before.duration_ms
        assert all(a.duration_ms <= 100 and a.dropped_ms == 0 for a in audio_large)
        assert len(audio_large) < len(audio_small)

    # The pre-roll and the audio that confirmed the start go out at once, whatever the chunk
    # size: with 140 ms, the pre-roll's 300 ms and the start do not fill whole chunks, so the
    # audio sent at the start ends in a short chunk reaching past the start; every other chunk
    # inside a segment is full.
    sent_at_start = []
    for start, audio in by_segment(odd):
        assert b"".join(a.pcm for a in audio) == b"".join(
            a.pcm for s, same in segments_small if s == start for a in same
        )
        short = [a for a in audio[:-1] if a.duration_ms < 140]
        assert len(short) <= 1, [a.duration_ms for a in audio]
        assert all(a.offset_ms + a.duration_ms > start.start_ms for a in short)
        sent_at_start += short
    assert sent_at_start


@pytest.mark.parametrize("chunk_ms", [1, 19, 201, 5000])
async def test_a_chunk_ms_out_of_range_is_invalid_argument_naming_the_field(chunk_ms: int) -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        created = await stub.CreateSession(pb.CreateSessionRequest())
        request = pb.StreamAudioRequest(session_id=created.id, chunk_ms=chunk_ms)
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.StreamAudio(request).read()
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"chunk_ms must be 0 or 20..200, got {chunk_ms}" == bad.value.details()
    status = rpc_status.from_call(bad.value)
    assert status is not None
    info = ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, dict(info.metadata)) == ("INVALID_ARGUMENT", {"field": "chunk_ms"})
