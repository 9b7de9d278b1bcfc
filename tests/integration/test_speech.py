"""Speech detection and StreamAudio over real WebRTC, against the fixtures' ground truth."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import av
import grpc
import pytest
from aiortc.mediastreams import MediaStreamTrack

from media.v1 import media_pb2 as pb
from tests.listening import listening, loud
from tests.support import (
    FIXTURES,
    SPEECH,
    eventually,
    grpc_stub,
    publish,
    running_server,
    swap_sent_packets,
    truth,
)

TRUTH = truth()
UTTERANCES = [(u["start_ms"], u["end_ms"]) for u in TRUTH["utterances"]]
PRE_ROLL_MS = 300


@dataclass
class Heard:
    """What a backend saw of one session: speech events and the StreamAudio chunks."""

    started: list[pb.SpeechStarted] = field(default_factory=list)
    ended: list[pb.SpeechEnded] = field(default_factory=list)
    chunks: list[pb.AudioChunk] = field(default_factory=list)


async def audio_until(stream: Any, end_ms: int) -> list[pb.AudioData]:
    """The audio of a StreamAudio stream until it reaches ``end_ms`` of the session's media."""
    audio: list[pb.AudioData] = []
    async with asyncio.timeout(30):
        async for chunk in stream:
            if chunk.HasField("audio"):
                audio.append(chunk.audio)
                if chunk.audio.offset_ms + chunk.audio.duration_ms >= end_ms:
                    return audio
    raise AssertionError(f"StreamAudio ended before {end_ms} ms of media")


async def watch_speech(stub: Any, session_id: str, heard: Heard) -> None:
    async for event in stub.WatchSession(pb.WatchSessionRequest(session_id=session_id)):
        kind = event.WhichOneof("payload")
        if kind == "speech_started":
            heard.started.append(event.speech_started)
        elif kind == "speech_ended":
            heard.ended.append(event.speech_ended)


async def read_audio(stream: Any, heard: Heard) -> None:
    async for chunk in stream:
        heard.chunks.append(chunk)


@contextlib.asynccontextmanager
async def observed(
    stub: Any, app: Any, fixture: pathlib.Path = SPEECH, swap_every: int = 0
) -> AsyncIterator[tuple[str, Heard]]:
    """A pre-created session publishing ``fixture``, watched and streamed as a backend would
    (``swap_every``: that many packets apart, two arrive swapped).

    On exit the session is ended, and both streams must then complete on their own.
    """
    created = await stub.CreateSession(pb.CreateSessionRequest())
    heard = Heard()
    watcher = asyncio.ensure_future(watch_speech(stub, created.id, heard))
    audio = stub.StreamAudio(pb.StreamAudioRequest(session_id=created.id, mode=pb.SPEECH))
    reader = asyncio.ensure_future(read_audio(audio, heard))
    publisher = await publish(
        app.base_url, f"/whip/{created.id}", token=created.token, fixture=fixture
    )
    if swap_every:
        assert swap_sent_packets(publisher.pc, swap_every), "aiortc sends RTP another way"
    try:
        yield created.id, heard
        await stub.EndSession(pb.EndSessionRequest(session_id=created.id))
        await asyncio.wait_for(asyncio.gather(watcher, reader), 5)
    finally:
        watcher.cancel()
        reader.cancel()
        await publisher.vanish()


async def listen_to(stub: Any, app: Any, fixture: pathlib.Path, **listen: Any) -> Heard:
    """Listen from READY until the server has analysed the whole fixture."""
    async with observed(stub, app, fixture) as (session_id, heard):
        everything = stub.StreamAudio(pb.StreamAudioRequest(session_id=session_id, mode=pb.ALL))
        await stub.StartListening(
            pb.StartListeningRequest(session_id=session_id, wait_for_ready=True, **listen),
            timeout=10,
        )
        # the jitter buffer may hold the last frames back until a packet that never comes
        await analysed_up_to(everything, fixture_ms(fixture) - 60)
        everything.cancel()
    return heard


def fixture_ms(fixture: pathlib.Path) -> int:
    with av.open(str(fixture)) as container:
        return 20 * sum(1 for packet in container.demux(audio=0) if packet.size)


async def analysed_up_to(stream: Any, end_ms: int) -> None:
    """Read a StreamAudio ALL stream until its audio reaches ``end_ms`` of the session's media."""
    async with asyncio.timeout(30):
        async for chunk in stream:
            audio = chunk.audio
            if chunk.HasField("audio") and audio.offset_ms + audio.duration_ms >= end_ms:
                return
    raise AssertionError(f"StreamAudio ended before {end_ms} ms of media")


def assert_matches_truth(heard: Heard, start_tolerance: int, end_tolerance: int) -> None:
    assert len(heard.started) == len(UTTERANCES), heard.started
    assert len(heard.ended) == len(UTTERANCES), heard.ended
    for (true_start, true_end), started, ended in zip(
        UTTERANCES, heard.started, heard.ended, strict=True
    ):
        assert started.segment_id == ended.segment_id
        assert abs(started.start_ms - true_start) <= start_tolerance, (started, true_start)
        assert abs(ended.end_ms - true_end) <= end_tolerance, (ended, true_end)
        assert ended.reason == pb.SILENCE
        assert ended.duration_ms == ended.end_ms - ended.start_ms


def covered_ms(chunks: list[pb.AudioChunk]) -> list[tuple[int, int]]:
    spans = sorted(
        (c.audio.offset_ms, c.audio.offset_ms + c.audio.duration_ms)
        for c in chunks
        if c.WhichOneof("payload") == "audio"
    )
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


async def test_speech_segments_and_audio_match_the_ground_truth() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        clean, noisy, silent, hiss = await asyncio.gather(
            listen_to(stub, app, FIXTURES / "speech.ogg"),
            listen_to(stub, app, FIXTURES / "speech_noise20.ogg"),
            listen_to(stub, app, FIXTURES / "silence.ogg"),
            listen_to(stub, app, FIXTURES / "noise.ogg"),
        )

    assert_matches_truth(clean, start_tolerance=150, end_tolerance=250)
    assert_matches_truth(noisy, start_tolerance=150, end_tolerance=250)
    assert (silent.started, silent.ended, silent.chunks) == ([], [], [])
    assert (hiss.started, hiss.ended, hiss.chunks) == ([], [], [])

    spans = covered_ms(clean.chunks)
    for true_start, true_end in UTTERANCES:
        want = (max(0, true_start - PRE_ROLL_MS + 40), true_end - 20)
        assert any(s <= want[0] and want[1] <= e for s, e in spans), (want, spans)
    kinds = [c.WhichOneof("payload") for c in clean.chunks]
    assert kinds.count("segment_start") == kinds.count("segment_end") == len(UTTERANCES)
    assert kinds[0] == "segment_start" and kinds[-1] == "segment_end"
    assert [c.sequence for c in clean.chunks] == list(range(1, len(clean.chunks) + 1))
    for chunk in clean.chunks:
        if chunk.WhichOneof("payload") == "audio":
            audio = chunk.audio
            assert audio.sample_rate == 16000 and audio.segment_id > 0
            assert len(audio.pcm) == audio.sample_rate * audio.duration_ms // 1000 * 2
            assert 10 <= audio.duration_ms <= 100
            assert audio.dropped_ms == 0


async def test_packets_swapped_on_the_way_lose_no_audio_and_keep_speech_on_time() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        async with observed(stub, app, swap_every=4) as (session_id, heard):
            everything = stub.StreamAudio(pb.StreamAudioRequest(session_id=session_id, mode=pb.ALL))
            await stub.StartListening(
                pb.StartListeningRequest(session_id=session_id, wait_for_ready=True), timeout=10
            )
            audio = await audio_until(everything, fixture_ms(SPEECH) - 60)
            everything.cancel()

    assert_matches_truth(heard, start_tolerance=150, end_tolerance=250)
    holes = [
        (before.offset_ms + before.duration_ms, after.offset_ms)
        for before, after in zip(audio, audio[1:], strict=False)
        if after.offset_ms != before.offset_ms + before.duration_ms
    ]
    assert holes == [], "every swapped packet's 20 ms reached the backend"


async def test_listening_started_after_the_onset_still_delivers_the_first_syllable() -> None:
    first_start, _ = UTTERANCES[0]
    async with running_server() as app, grpc_stub(app) as stub:
        async with observed(stub, app) as (session_id, heard):
            token = app.sessions.get(session_id).token
            async with listening(app.base_url, session_id, token=token, source="publisher") as user:
                # the server has the user's first 200 ms of speech when this player has heard it
                await eventually(lambda: len(loud(user.heard)) >= 10, "the user starts talking")
            await stub.StartListening(pb.StartListeningRequest(session_id=session_id))
            await eventually(lambda: bool(heard.ended), "the first utterance ends")
    assert abs(heard.started[0].start_ms - first_start) <= 150
    first_audio = next(c.audio for c in heard.chunks if c.WhichOneof("payload") == "audio")
    assert first_audio.offset_ms <= first_start


async def test_a_slow_reader_is_told_what_it_lost_and_a_fast_one_loses_nothing() -> None:
    async with running_server(audio_queue_ms=300) as app, grpc_stub(app) as stub:
        publisher = await publish(app.base_url)
        sid = publisher.session_id
        slow_channel = grpc.aio.insecure_channel(
            app.grpc_target, options=[("grpc.http2.bdp_probe", 0)]
        )
        try:
            from media.v1 import media_pb2_grpc

            slow_stub = media_pb2_grpc.MediaServiceStub(slow_channel)
            request = pb.StreamAudioRequest(session_id=sid, mode=pb.ALL, sample_rate=48000)
            slow = slow_stub.StreamAudio(request)
            fast_heard = Heard()
            fast = asyncio.ensure_future(
                read_audio(
                    stub.StreamAudio(pb.StreamAudioRequest(session_id=sid, mode=pb.ALL)), fast_heard
                )
            )
            await stub.StartListening(
                pb.StartListeningRequest(session_id=sid, wait_for_ready=True), timeout=10
            )
            fast_ms = lambda: sum(c.audio.duration_ms for c in fast_heard.chunks)  # noqa: E731
            # the slow reader, reading nothing, falls more than 300 ms behind meanwhile
            await eventually(lambda: fast_ms() >= 3500, "3.5 s of audio streamed")
            slow_chunks = []
            async with asyncio.timeout(5):
                while sum(c.audio.dropped_ms for c in slow_chunks) == 0:
                    slow_chunks.append(await slow.read())
            await stub.EndSession(pb.EndSessionRequest(session_id=sid))
            await asyncio.wait_for(fast, 5)
        finally:
            await slow_channel.close()
            await publisher.vanish()
    assert sum(c.audio.dropped_ms for c in slow_chunks) > 0
    audio = [c.audio for c in fast_heard.chunks if c.WhichOneof("payload") == "audio"]
    assert sum(a.dropped_ms for a in audio) == 0
    assert sum(a.duration_ms for a in audio) >= 3500
    for before, after in zip(audio, audio[1:], strict=False):
        assert after.offset_ms == before.offset_ms + before.duration_ms


async def test_vad_overrides_apply_per_session_and_bad_values_name_the_field() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        created = await stub.CreateSession(pb.CreateSessionRequest())
        cases = [
            (pb.VadOptions(start_ratio=1.5), "vad.start_ratio must be between 0.05 and 1"),
            (pb.VadOptions(aggressiveness=7), "vad.aggressiveness must be between 0 and 3"),
            (pb.VadOptions(end_silence_ms=10), "vad.end_silence_ms must be between 100"),
            (pb.VadOptions(max_segment_ms=50), "vad.max_segment_ms must be between"),
        ]
        for options, message in cases:
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.StartListening(
                    pb.StartListeningRequest(session_id=created.id, vad=options)
                )
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (bad.value.details() or "")
        for request, message in [
            (pb.StreamAudioRequest(session_id=created.id, sample_rate=11025), "sample_rate"),
            (pb.StreamAudioRequest(session_id=created.id, mode=9), "mode 9"),  # type: ignore[arg-type]
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.StreamAudio(request).read()
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (bad.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.StreamAudio(pb.StreamAudioRequest(session_id="nope")).read()
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

        split = await listen_to(
            stub, app, FIXTURES / "speech.ogg", vad=pb.VadOptions(max_segment_ms=1000)
        )
    longest = max(e.duration_ms for e in split.ended)
    assert longest <= 1000
    assert any(e.reason == pb.MAX_LENGTH for e in split.ended)
    assert len(split.started) > len(UTTERANCES)


async def test_stop_listening_cuts_a_segment_with_a_reason_and_the_stream_stays_open() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        async with observed(stub, app) as (session_id, heard):
            await stub.StartListening(
                pb.StartListeningRequest(session_id=session_id, wait_for_ready=True), timeout=10
            )
            await eventually(lambda: bool(heard.started), "the user starts talking")
            await stub.StopListening(pb.StopListeningRequest(session_id=session_id))
            await eventually(lambda: bool(heard.ended), "the segment ends")
            assert heard.ended[0].reason == pb.STOPPED
            await stub.StartListening(pb.StartListeningRequest(session_id=session_id))
            await eventually(lambda: len(heard.ended) >= 2, "the next segment ends", timeout=20)
    assert heard.ended[1].reason == pb.SILENCE
    ends = [c.segment_end for c in heard.chunks if c.WhichOneof("payload") == "segment_end"]
    assert [e.reason for e in ends[:2]] == [pb.STOPPED, pb.SILENCE]


class ClockStepsBack(MediaStreamTrack):
    """The fixture's packets, with the sender's RTP clock set back 1 s from 5 s on (just before
    the third utterance), as a publisher that restarts its clock does."""

    kind = "audio"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self._source = source

    async def recv(self) -> Any:
        packet = await self._source.recv()
        if packet.pts is not None and packet.pts * packet.time_base >= 5:
            packet.pts -= int(1 / packet.time_base)
        return packet

    def stop(self) -> None:
        super().stop()
        self._source.stop()


async def test_a_publisher_clock_stepping_back_keeps_speech_offsets_continuous() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        created = await stub.CreateSession(pb.CreateSessionRequest())
        heard = Heard()
        watcher = asyncio.ensure_future(watch_speech(stub, created.id, heard))
        publisher = await publish(
            app.base_url, f"/whip/{created.id}", token=created.token, wrap=ClockStepsBack
        )
        try:
            await stub.StartListening(
                pb.StartListeningRequest(session_id=created.id, wait_for_ready=True), timeout=10
            )
            async with asyncio.timeout(TRUTH["duration_ms"] / 1000 + 15):
                while len(heard.ended) < len(UTTERANCES):
                    await asyncio.sleep(0.1)
        finally:
            watcher.cancel()
            await publisher.vanish()
    offsets = [e.start_ms for e in heard.ended] + [e.end_ms for e in heard.ended]
    assert max(offsets) < TRUTH["duration_ms"] + 1000, f"speech dated at {max(offsets)} ms"
    for (true_start, _), ended in zip(UTTERANCES, heard.ended, strict=True):
        assert abs(ended.start_ms - true_start) <= 200, (ended, true_start)
