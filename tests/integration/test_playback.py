"""The return path with real aiortc WHEP players over loopback: agent audio, barge-in, fan-out."""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import time
from typing import Any

import av
import grpc
import pytest
import webrtcvad

from media.audio.pcm import PcmConverter
from media.core.events import SpeechStarted
from media.core.segmenter import Segmenter, SegmenterConfig
from media.rtc.compat import ice_connections, tap_opus_packets
from media.v1 import media_pb2 as pb
from tests.integration.test_operations import scrape, value
from tests.listening import (
    SILENCE_DBFS,
    Heard,
    fell_silent,
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
from tests.scenarios import barge_in
from tests.support import (
    FIXTURES,
    SPEECH,
    events_until,
    eventually,
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


async def started(watch: Any, playback_id: str) -> None:
    """Read the watch up to this playback's start (earlier events are stale for the caller)."""
    while True:
        event = await next_event(watch)
        if event.HasField("playback_started") and event.playback_started.playback_id == playback_id:
            return


def frames_since_sound(heard: list[Heard]) -> int:
    """Frames decoded since the first loud one."""
    first = next((i for i, frame in enumerate(heard) if frame.dbfs > SILENCE_DBFS), len(heard))
    return len(heard) - first


def silence_after_sound(heard: list[Heard]) -> int:
    """Silent frames decoded since the last loud one."""
    count = 0
    for frame in reversed(heard):
        if frame.dbfs > SILENCE_DBFS:
            return count
        count += 1
    return 0


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
            await eventually(lambda: fell_silent(player.heard), "the player heard the tone end")
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


async def test_the_user_speaking_cuts_the_agent_off() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        # how soon the agent falls silent is measured in benchmarks/timings.py
        scene = await barge_in(app, stub)
    events, reply = scene.events, scene.reply

    speech = next(e for e in events if e.HasField("speech_started"))
    spoke_at = seconds(speech.time)
    assert loud(f for f in scene.heard if f.time < spoke_at), "the agent was not audible"
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
            # from the first utterance to 0.8 s past the end of the last one
            frames = (truth()["duration_ms"] - expected[0] - 200) // 20
            for player in players:
                await eventually(
                    lambda: frames_since_sound(player.heard) >= frames,  # noqa: B023
                    "every player heard the whole fixture",
                    timeout=30,
                )
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
            for player in (hears_a, hears_b):
                await eventually(lambda: fell_silent(player.heard), "heard the tone end")  # noqa: B023
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
        await started(watch, "first")
        second = play(550, 0.2, playback_id="second")
        assert (await first).played_ms == 400 and (await second).played_ms == 200
        replaced = play(440, 5.0, playback_id="long")
        await started(watch, "long")
        replacing = play(660, 0.2, mode=pb.REPLACE, playback_id="instead")
        assert (await replaced).interrupt_reason == pb.REPLACED
        assert (await replacing).played_ms == 200
        stopped = play(440, 5.0, playback_id="stopped")
        await started(watch, "stopped")
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
            await eventually(lambda: bool(staying.heard and vanishing.heard), "both players hear")
            for connection in ice_connections(vanishing.pc):
                for protocol in connection._protocols:  # stop answering, say nothing
                    protocol.transport.close()
            await eventually(
                lambda: (
                    metric(app, "hark_whep_players_closed_total", 'reason="MEDIA_TIMEOUT"') >= 1
                ),
                "the vanished player is closed for its media timeout",
            )
            heard_before = len(staying.heard)
            await eventually(lambda: len(staying.heard) > heard_before, "the other player hears")
            snapshot = await stub.GetSession(pb.GetSessionRequest(session_id=session.id))
            assert snapshot.state == pb.READY
            assert metric(app, "hark_whep_players", 'source="agent"') == 0
            assert metric(app, "hark_whep_players", 'source="publisher"') == 1

            await stub.EndSession(pb.EndSessionRequest(session_id=session.id))
            await eventually(
                lambda: staying.pc.connectionState in ("closed", "failed"),
                "the player's connection ends with the session",
            )
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


async def test_a_publisher_is_read_packet_by_packet_only_once_a_source_publisher_player_joins() -> (
    None
):
    async with running_server() as app, grpc_stub(app) as stub:
        url = app.base_url + "/metrics"
        session = await stub.CreateSession(pb.CreateSessionRequest())
        publisher = await publish(app.base_url, f"/whip/{session.id}", token=session.token)
        try:
            async with listening(app.base_url, session.id, token=session.token) as agent_player:
                await eventually(lambda: len(agent_player.heard) >= 10, "an agent player hears")
                async with asyncio.timeout(20):
                    while (
                        value(receiving := await scrape(url), "hark_rtp_packets_received_total")
                        < 50
                    ):
                        await asyncio.sleep(0.1)
            assert value(receiving, "hark_publisher_packets_tapped_total") == 0
            async with listening(
                app.base_url, session.id, token=session.token, source="publisher"
            ) as player:
                await eventually(lambda: len(player.heard) >= 10, "the publisher player hears")
                tapped = await scrape(url)
            assert value(tapped, "hark_publisher_packets_tapped_total") >= 10
        finally:
            await publisher.delete()


async def test_a_player_hears_nothing_from_another_sessions_publisher() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        quiet = await stub.CreateSession(pb.CreateSessionRequest())
        async with listening(app.base_url, quiet.id, token=quiet.token, source="publisher") as p:
            silent = await publish(
                app.base_url, f"/whip/{quiet.id}", token=quiet.token, fixture=SILENCE
            )
            talking = await publish(app.base_url)
            async with listening(
                app.base_url, talking.session_id, source="publisher"
            ) as hears_talking:
                # the other session's user talked for half a second while this player listened
                await eventually(
                    lambda: len(loud(hears_talking.heard)) >= 25 and len(p.heard) >= 50,
                    "the other session's player hears its user talk",
                )
            await talking.delete()
            await silent.delete()
    assert len(p.heard) >= 50, "the player heard nothing of its own session's publisher"
    assert not loud(p.heard)


async def test_a_caller_faster_than_real_time_is_held_back_and_loses_nothing() -> None:
    async with running_server(max_playback_queue_s=1.0) as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        voice = app.sessions.get(session.id).voice
        queued: list[int] = []

        async def sample() -> None:
            while True:
                queued.append(voice.queue.queued_ms)
                await asyncio.sleep(0.05)  # a sample every 50 ms: the queue is only seen by polling

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
        voice = app.sessions.get(session.id).voice
        more = asyncio.Event()

        # the start and 500 ms, then more once released, as a TTS engine still synthesising
        messages = play_requests(session.id, tone(440, 1.0), playback_id="first")
        first_caller = hold_open(messages[:6], more, then=messages[6:])
        first = asyncio.ensure_future(stub.PlayAudio(first_caller, timeout=20))
        await eventually(lambda: voice.queue.ids() == ["first"], "the first playback is queued")
        second = asyncio.ensure_future(
            stub.PlayAudio(requests_of(play_requests(session.id, tone(660, 3.0))), timeout=20)
        )
        await eventually(  # the second caller is held at the limit
            lambda: voice.queue.queued_ms >= 1000, "the queue fills to its limit"
        )
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
            await eventually(lambda: fell_silent(player.heard), "the player heard the tone end")
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
            await eventually(lambda: len(loud(player.heard)) >= 10, "the user hears the playback")
            playing.set()
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await call
            events = await events_until(watch, "playback_interrupted")
            # had what was still queued been played, it would come before this much silence
            await eventually(
                lambda: silence_after_sound(player.heard) >= 50, "1 s of silence after the cut"
            )
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "message 22 has 1 bytes" in (failure.value.details() or "")
    interrupted = events[-1].playback_interrupted
    assert interrupted.playback_id == "garbled" and interrupted.reason == pb.CALL_FAILED
    heard_ms = 20 * len(loud(player.heard))
    print(f"\nplayed {interrupted.played_ms} ms of 2000 before the bad chunk; heard {heard_ms} ms")
    assert 200 <= interrupted.played_ms < 2000
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


async def test_a_vanished_player_is_removed_for_its_media_timeout_not_the_connect_timeout() -> None:
    server = running_server(player_timeout=1.0, ready_timeout=60.0)
    async with server as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        publisher = await publish(app.base_url, f"/whip/{session.id}", token=session.token)
        vanishing = await listen(app.base_url, session.id, token=session.token, source="publisher")
        try:
            await eventually(lambda: bool(vanishing.heard), "the player hears")
            for connection in ice_connections(vanishing.pc):
                for protocol in connection._protocols:  # stop answering, say nothing
                    protocol.transport.close()
            await eventually(
                lambda: (
                    metric(app, "hark_whep_players_closed_total", 'reason="MEDIA_TIMEOUT"') == 1
                ),
                "the vanished player is closed long before the 60 s connect timeout",
            )
        finally:
            await vanishing.close()
            await publisher.delete()


async def test_a_player_that_closes_its_connection_without_delete_is_removed_at_once() -> None:
    async with running_server(player_timeout=30.0) as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        leaving = await listen(app.base_url, session.id, token=session.token)
        async with listening(app.base_url, session.id, token=session.token) as staying:
            await eventually(lambda: bool(leaving.heard), "the leaving player hears")
            await leaving.close()  # no DELETE
            await eventually(
                lambda: (
                    metric(app, "hark_whep_players_closed_total", 'reason="CONNECTION_CLOSED"') >= 1
                ),
                "the player is removed for its closed connection, not its 30 s media timeout",
            )
            assert metric(app, "hark_whep_players", 'source="agent"') == 1
            heard = len(staying.heard)
            await eventually(lambda: len(staying.heard) > heard, "the other player hears")


async def test_after_a_stalled_event_loop_the_players_rtp_clock_skips_the_stall() -> None:
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
            await eventually(lambda: len(loud(player.heard)) >= 10, "the user hears the playback")
            time.sleep(0.4)  # block the loop (server, player and all) as a slow callback would
            reply = await talking
    # the stalled ticks are skipped, not sent late in a burst: the RTP clock jumps over them
    # (how closely it then follows wall time is measured in benchmarks/timings.py)
    steps = [(b - a) % 2**32 for (_, a), (_, b) in itertools.pairwise(arrivals)]
    print(f"\nlargest RTP timestamp step across a 400 ms stall: {max(steps) / 48:.0f} ms")
    assert max(steps) >= 0.3 * 48000
    assert reply.played_ms == 3000 and not reply.interrupted
