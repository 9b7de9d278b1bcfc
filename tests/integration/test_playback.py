"""The return path with real aiortc WHEP players over loopback: agent audio, barge-in, fan-out."""

from __future__ import annotations

import array
import asyncio
import contextlib
import time
from typing import Any

import av
import grpc
import pytest
import webrtcvad

from media.audio import PcmConverter
from media.peer import ice_connections, tap_opus_packets
from media.v1 import media_pb2 as pb
from media.vad import Segmenter, SegmenterConfig, SpeechStarted
from tests.listening import (
    Heard,
    frequency,
    hold_open,
    listen,
    listening,
    loud,
    opus_payload_type,
    play_requests,
    requests_of,
    tone,
)
from tests.support import (
    FIXTURES,
    SPEECH,
    grpc_stub,
    next_event,
    publish,
    running_server,
    truth,
)

SILENCE = FIXTURES / "silence.ogg"


def seconds(ts: Any) -> float:
    return float(ts.seconds + ts.nanos / 1e9)


def tone_of(heard: list[Heard]) -> tuple[float, int]:
    """Frequency (edges left out) and duration in ms of the loud part of what a player heard."""
    frames = loud(heard)
    inner = array.array("h")
    for frame in frames[1:-1]:
        inner.extend(frame.samples)
    return frequency(inner), len(frames) * 20


async def events_until(watch: Any, kind: str, timeout: float = 10.0) -> list[pb.SessionEvent]:
    seen: list[pb.SessionEvent] = []
    while not seen or seen[-1].WhichOneof("payload") != kind:
        seen.append(await next_event(watch, timeout))
    return seen


async def until_started(watch: Any, playback_id: str) -> list[pb.SessionEvent]:
    """Events up to the playback_started of ``playback_id`` (not an earlier playback's)."""
    seen: list[pb.SessionEvent] = []
    while not seen or seen[-1].playback_started.playback_id != playback_id:
        seen += await events_until(watch, "playback_started")
    return seen


def playback_events(events: list[pb.SessionEvent]) -> list[str]:
    return [
        e.WhichOneof("payload") for e in events if e.WhichOneof("payload").startswith("playback")
    ]


async def test_a_player_hears_a_played_tone_at_its_pitch_and_length() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        watch = stub.WatchSession(pb.WatchSessionRequest(session_id=session.id))
        await next_event(watch)
        async with listening(app.base_url, session.id, token=session.token) as player:
            reply = await stub.PlayAudio(
                requests_of(play_requests(session.id, tone(440, 1.0, 24000), rate=24000)),
                timeout=10,
            )
            events = await events_until(watch, "playback_finished")
            await asyncio.sleep(0.3)
            pitch, duration_ms = tone_of(player.heard)

    print(f"\nheard {pitch:.1f} Hz for {duration_ms} ms")
    assert abs(pitch - 440) <= 5
    assert abs(duration_ms - 1000) <= 40
    assert reply.played_ms == 1000 and not reply.interrupted
    assert playback_events(events) == ["playback_started", "playback_finished"]
    started, finished = events[-2], events[-1]
    assert started.playback_started.playback_id == reply.playback_id
    assert started.playback_started.players == 1
    assert finished.playback_finished.played_ms == 1000
    assert finished.revision == started.revision + 1


async def test_the_user_speaking_cuts_the_agent_off_within_150_ms() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        watch = stub.WatchSession(pb.WatchSessionRequest(session_id=session.id))
        await next_event(watch)
        async with listening(app.base_url, session.id, token=session.token) as player:
            talking = asyncio.ensure_future(
                stub.PlayAudio(requests_of(play_requests(session.id, tone(440, 20.0))))
            )
            await events_until(watch, "playback_started")
            publisher = await publish(app.base_url, f"/whip/{session.id}", token=session.token)
            await stub.StartListening(
                pb.StartListeningRequest(session_id=session.id, wait_for_ready=True), timeout=10
            )
            events = await events_until(watch, "playback_interrupted")
            reply = await asyncio.wait_for(talking, 5)
            await asyncio.sleep(0.5)
            await publisher.delete()

    speech = next(e for e in events if e.HasField("speech_started"))
    spoke_at = seconds(speech.time)
    before = [f for f in player.heard if spoke_at - 0.2 <= f.time < spoke_at]
    assert loud(before), "the agent was not audible just before the user spoke"
    last_loud = loud(player.heard)[-1]
    quiet_at = next(f.time for f in player.heard if f.time > last_loud.time)
    print(f"\nagent audio silent {1000 * (quiet_at - spoke_at):.0f} ms after SpeechStarted")
    assert quiet_at - spoke_at <= 0.150
    interrupted = events[-1].playback_interrupted
    assert interrupted.reason == pb.USER_SPEECH
    assert events[-1].revision == speech.revision + 1
    assert reply.interrupted and reply.interrupt_reason == pb.USER_SPEECH
    assert reply.played_ms == interrupted.played_ms and 0 < reply.played_ms < 20000


def utterances_in(samples: array.array[int]) -> list[int]:
    """Start (ms) of every speech segment the server's own VAD rules find in 48 kHz audio."""
    pcm = PcmConverter(48000, 1, 16000).convert(samples.tobytes())
    vad = webrtcvad.Vad(2)
    segmenter = Segmenter(SegmenterConfig())
    starts = []
    for offset in range(0, len(pcm) - 640 + 1, 640):
        for event in segmenter.push(vad.is_speech(pcm[offset : offset + 640], 16000), offset // 32):
            if isinstance(event, SpeechStarted):
                starts.append(event.start_ms)
    return starts


def fixture_payloads() -> set[bytes]:
    with av.open(str(SPEECH)) as container:
        return {bytes(p) for p in container.demux(audio=0) if p.size}


async def test_publisher_players_get_the_users_own_packets_and_hear_every_utterance() -> None:
    expected = [u["start_ms"] for u in truth()["utterances"]]
    async with running_server() as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        players = [
            await listen(app.base_url, session.id, token=session.token, source="publisher")
            for _ in range(3)
        ]
        relayed: list[bytes] = []
        receiver = players[0].pc.getTransceivers()[0].receiver
        payload_type = opus_payload_type(players[0].answer)
        assert tap_opus_packets(receiver, payload_type, lambda data, _: relayed.append(data))
        try:
            publisher = await publish(app.base_url, f"/whip/{session.id}", token=session.token)
            await asyncio.sleep(truth()["duration_ms"] / 1000 + 1.5)
            await publisher.delete()
        finally:
            for player in players:
                await player.close()

    assert relayed and set(relayed) <= fixture_payloads(), "payloads were not relayed as sent"
    for player in players:
        first = loud(player.heard)[0].time
        heard = player.samples(since=first - 0.5)
        starts = utterances_in(heard)
        print(f"\nutterances heard at {starts} ms (truth {expected}, shifted)")
        assert len(starts) == len(expected)
        shift = starts[0] - expected[0]
        assert all(abs(s - shift - e) <= 120 for s, e in zip(starts, expected, strict=True))


async def test_two_sessions_each_hear_only_their_own_agent() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        a = await stub.CreateSession(pb.CreateSessionRequest())
        b = await stub.CreateSession(pb.CreateSessionRequest())
        async with (
            listening(app.base_url, a.id, token=a.token) as hears_a,
            listening(app.base_url, b.id, token=b.token) as hears_b,
        ):
            await asyncio.gather(
                stub.PlayAudio(requests_of(play_requests(a.id, tone(440, 1.0)))),
                stub.PlayAudio(requests_of(play_requests(b.id, tone(660, 1.0)))),
            )
            await asyncio.sleep(0.3)
    pitch_a, length_a = tone_of(hears_a.heard)
    pitch_b, length_b = tone_of(hears_b.heard)
    print(f"\nsession a heard {pitch_a:.1f} Hz, session b {pitch_b:.1f} Hz")
    assert abs(pitch_a - 440) <= 5 and abs(pitch_b - 660) <= 5
    assert abs(length_a - 1000) <= 40 and abs(length_b - 1000) <= 40


async def test_enqueue_replace_and_stop_playback_end_playbacks_as_asked() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        sid = session.id
        watch = stub.WatchSession(pb.WatchSessionRequest(session_id=sid))
        await next_event(watch)

        def play(pitch: float, seconds: float, **options: Any) -> asyncio.Future[Any]:
            messages = play_requests(sid, tone(pitch, seconds), **options)
            return asyncio.ensure_future(stub.PlayAudio(requests_of(messages)))

        first = play(440, 0.4, playback_id="first")
        await events_until(watch, "playback_started")
        second = play(550, 0.2, playback_id="second")
        assert (await first).played_ms == 400 and (await second).played_ms == 200
        replaced = play(440, 5.0, playback_id="long")
        await until_started(watch, "long")
        replacing = play(660, 0.2, mode=pb.REPLACE, playback_id="instead")
        assert (await replaced).interrupt_reason == pb.REPLACED
        assert (await replacing).played_ms == 200
        stopped = play(440, 5.0, playback_id="stopped")
        await until_started(watch, "stopped")
        stop = await stub.StopPlayback(pb.StopPlaybackRequest(session_id=sid))
        assert list(stop.playback_ids) == ["stopped"]
        reply = await stopped
        assert reply.interrupted and reply.interrupt_reason == pb.STOP_PLAYBACK
        events = await events_until(watch, "playback_interrupted")

    ended = [
        (
            e.playback_interrupted.playback_id,
            pb.PlaybackInterruptReason.Name(e.playback_interrupted.reason),
        )
        for e in events
        if e.HasField("playback_interrupted")
    ]
    assert ended == [("stopped", "STOP_PLAYBACK")]


async def test_players_end_with_the_session_and_a_vanished_player_is_removed_alone() -> None:
    async with running_server(player_timeout=2.0) as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        publisher = await publish(app.base_url, f"/whip/{session.id}", token=session.token)
        staying = await listen(app.base_url, session.id, token=session.token, source="publisher")
        vanishing = await listen(app.base_url, session.id, token=session.token)
        try:
            await asyncio.sleep(1.0)
            for connection in ice_connections(vanishing.pc):
                for protocol in connection._protocols:  # stop answering, say nothing
                    protocol.transport.close()
            async with asyncio.timeout(10):
                while metric(app, "hark_whep_players_closed_total", 'reason="MEDIA_TIMEOUT"') < 1:
                    await asyncio.sleep(0.2)
            heard_before = len(staying.heard)
            await asyncio.sleep(0.5)
            assert len(staying.heard) > heard_before, "the other player stopped hearing"
            snapshot = await stub.GetSession(pb.GetSessionRequest(session_id=session.id))
            assert snapshot.state == pb.READY
            assert metric(app, "hark_whep_players", 'source="agent"') == 0
            assert metric(app, "hark_whep_players", 'source="publisher"') == 1

            await stub.EndSession(pb.EndSessionRequest(session_id=session.id))
            async with asyncio.timeout(5):
                while staying.pc.connectionState not in ("closed", "failed"):
                    await asyncio.sleep(0.1)
            assert metric(app, "hark_whep_players", 'source="publisher"') == 0
            assert metric(app, "hark_whep_players_closed_total", 'reason="SESSION_CLOSED"') == 1
        finally:
            await publisher.delete()
            with contextlib.suppress(Exception):
                await vanishing.close()
            await staying.close()


def metric(app: Any, name: str, labels: str) -> float:
    for line in app.metrics.exposition().decode().splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{labels}}} is not exported")


async def test_a_player_hears_nothing_from_another_sessions_publisher() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        quiet = await stub.CreateSession(pb.CreateSessionRequest())
        async with listening(app.base_url, quiet.id, token=quiet.token, source="publisher") as p:
            silent = await publish(
                app.base_url, f"/whip/{quiet.id}", token=quiet.token, fixture=SILENCE
            )
            talking = await publish(app.base_url)
            await asyncio.sleep(2.0)
            await talking.delete()
            await silent.delete()
    assert len(p.heard) >= 50, "the player heard nothing of its own session's publisher"
    assert not loud(p.heard)


async def test_a_caller_faster_than_real_time_is_held_back_and_loses_nothing() -> None:
    async with running_server(max_playback_queue_s=1.0) as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        voice = app.registry.lookup(session.id).voice
        queued: list[int] = []

        async def sample() -> None:
            while True:
                queued.append(voice.queue.queued_ms)
                await asyncio.sleep(0.05)

        sampler = asyncio.ensure_future(sample())
        try:
            reply = await stub.PlayAudio(
                requests_of(play_requests(session.id, tone(440, 4.0))), timeout=15
            )
        finally:
            sampler.cancel()
    print(f"\nmost audio queued at once: {max(queued)} ms")
    assert max(queued) <= 1000 + 100  # the limit, plus the chunk that crossed it
    assert reply.played_ms == 4000 and not reply.interrupted


async def test_a_caller_still_sending_is_not_held_back_by_audio_queued_behind_it() -> None:
    async with running_server(max_playback_queue_s=1.0) as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        voice = app.registry.lookup(session.id).voice
        more = asyncio.Event()

        # the start and 500 ms, then more once released, as a TTS engine still synthesising
        messages = play_requests(session.id, tone(440, 1.0), playback_id="first")
        first_caller = hold_open(messages[:6], more, then=messages[6:])
        first = asyncio.ensure_future(stub.PlayAudio(first_caller, timeout=20))
        async with asyncio.timeout(5):
            while voice.queue.ids() != ["first"]:
                await asyncio.sleep(0.02)
        second = asyncio.ensure_future(
            stub.PlayAudio(requests_of(play_requests(session.id, tone(660, 3.0))), timeout=20)
        )
        async with asyncio.timeout(5):
            while voice.queue.queued_ms < 1000:  # the second caller is held at the limit
                await asyncio.sleep(0.02)
        more.set()
        replies = await asyncio.wait_for(asyncio.gather(first, second), 15)
    assert [(r.played_ms, r.interrupted) for r in replies] == [(1000, False), (3000, False)]


async def test_stereo_8_khz_audio_is_heard_at_its_pitch_and_length() -> None:
    mono = array.array("h", tone(440, 1.0, 8000))
    stereo = array.array("h", (s for sample in mono for s in (sample, sample)))
    async with running_server() as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        async with listening(app.base_url, session.id, token=session.token) as player:
            reply = await stub.PlayAudio(
                requests_of(play_requests(session.id, stereo.tobytes(), rate=8000, channels=2)),
                timeout=10,
            )
            await asyncio.sleep(0.3)
            pitch, duration_ms = tone_of(player.heard)
    print(f"\nheard {pitch:.1f} Hz for {duration_ms} ms")
    assert reply.played_ms == 1000 and not reply.interrupted
    assert abs(pitch - 440) <= 5 and abs(duration_ms - 1000) <= 40


async def test_a_bad_chunk_fails_the_call_and_the_user_hears_no_more_of_it() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        watch = stub.WatchSession(pb.WatchSessionRequest(session_id=session.id))
        await next_event(watch)
        playing = asyncio.Event()

        garbled = hold_open(  # 2 s of audio queued, then a chunk of half a sample
            play_requests(session.id, tone(440, 2.0), playback_id="garbled"),
            playing,
            then=[pb.PlayAudioRequest(pcm=b"\x00")],
        )
        async with listening(app.base_url, session.id, token=session.token) as player:
            call = asyncio.ensure_future(stub.PlayAudio(garbled, timeout=10))
            await events_until(watch, "playback_started")
            await asyncio.sleep(0.3)
            playing.set()
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await call
            events = await events_until(watch, "playback_interrupted")
            await asyncio.sleep(1.0)  # what was still queued would be heard now
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "message 22 has 1 bytes" in (failure.value.details() or "")
    interrupted = events[-1].playback_interrupted
    assert interrupted.playback_id == "garbled" and interrupted.reason == pb.CALL_FAILED
    heard_ms = 20 * len(loud(player.heard))
    print(f"\nplayed {interrupted.played_ms} ms of 2000 before the bad chunk; heard {heard_ms} ms")
    assert 200 <= interrupted.played_ms <= 1000
    assert heard_ms <= interrupted.played_ms + 60


async def test_a_playback_that_asked_not_to_be_interrupted_plays_through_the_users_speech() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        watch = stub.WatchSession(pb.WatchSessionRequest(session_id=session.id))
        await next_event(watch)
        publisher = await publish(app.base_url, f"/whip/{session.id}", token=session.token)
        try:
            await stub.StartListening(
                pb.StartListeningRequest(session_id=session.id, wait_for_ready=True), timeout=10
            )
            requests = play_requests(session.id, tone(440, 3.0), interrupt_on_speech=False)
            reply = await stub.PlayAudio(requests_of(requests), timeout=10)
            events = await events_until(watch, "playback_finished")
        finally:
            await publisher.delete()
    kinds = [e.WhichOneof("payload") for e in events]
    assert kinds.index("playback_started") < kinds.index("speech_started"), kinds
    assert "playback_interrupted" not in kinds
    assert reply.played_ms == 3000 and not reply.interrupted


async def test_a_player_that_closes_its_connection_without_delete_is_removed_at_once() -> None:
    async with running_server(player_timeout=30.0) as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        leaving = await listen(app.base_url, session.id, token=session.token)
        async with listening(app.base_url, session.id, token=session.token) as staying:
            async with asyncio.timeout(5):
                while not leaving.heard:
                    await asyncio.sleep(0.05)
            await leaving.close()  # no DELETE
            async with asyncio.timeout(5):  # well before the 30 s media timeout
                while (
                    metric(app, "hark_whep_players_closed_total", 'reason="CONNECTION_CLOSED"') < 1
                ):
                    await asyncio.sleep(0.1)
            assert metric(app, "hark_whep_players", 'source="agent"') == 1
            heard = len(staying.heard)
            await asyncio.sleep(0.3)
            assert len(staying.heard) > heard, "the other player stopped hearing"


async def test_after_a_stalled_event_loop_the_players_rtp_clock_still_follows_wall_time() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        async with listening(app.base_url, session.id, token=session.token) as player:
            receiver = player.pc.getTransceivers()[0].receiver
            arrivals: list[tuple[float, int]] = []
            assert tap_opus_packets(
                receiver,
                opus_payload_type(player.answer),
                lambda _, timestamp: arrivals.append((time.monotonic(), timestamp)),
            )
            talking = asyncio.ensure_future(
                stub.PlayAudio(requests_of(play_requests(session.id, tone(440, 3.0))))
            )
            await asyncio.sleep(1.0)
            time.sleep(0.4)  # block the loop (server, player and all) as a slow callback would
            await asyncio.sleep(1.0)
            await talking
    (first_at, first_ts), (last_at, last_ts) = arrivals[0], arrivals[-1]
    media_s = ((last_ts - first_ts) % 2**32) / 48000
    wall_s = last_at - first_at
    print(f"\nRTP clock {media_s:.3f} s for {wall_s:.3f} s of wall time across a 400 ms stall")
    assert abs(media_s - wall_s) <= 0.06
