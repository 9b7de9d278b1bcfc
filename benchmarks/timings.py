"""How soon things happen that the tests only check do happen (timing is never asserted there).

    .venv/bin/python benchmarks/timings.py [--trials 3]

A real server on loopback, real aiortc peers (tests/support.py, tests/listening.py). Per trial:

1. Barge-in: an agent tone plays to a WHEP player; the user starts talking. From the
   SpeechStarted event's timestamp to the first silent frame the player decodes after the agent's
   last loud one (tests/integration/test_playback.py::test_the_user_speaking_cuts_the_agent_off).
2. Media timeout: with ``--media-timeout 1``, from a READY publisher going silent without a word
   to its session's CLOSED (MEDIA_TIMEOUT) event at a watcher
   (test_lifecycle.py::test_a_publisher_that_vanishes_closes_with_media_timeout).
3. Stalled loop: a player hears a 3 s tone while the loop is blocked for 400 ms; the RTP clock's
   advance against wall time between the first and the last packet at the player
   (test_playback.py::test_after_a_stalled_event_loop_the_players_rtp_clock_skips_the_stall).
4. SIGTERM: ``hark serve --drain-timeout 2`` with a listening session, from the signal to the exit
   (test_process.py::test_sigterm_drains_then_closes_everyone_with_shutdown_and_exits_0).
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import grpc

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from media.rtc.compat import tap_opus_packets  # noqa: E402
from media.v1 import media_pb2 as pb  # noqa: E402
from media.v1 import media_pb2_grpc  # noqa: E402
from tests.listening import (  # noqa: E402
    listening,
    loud,
    opus_payload_type,
    play_requests,
    requests_of,
    tone,
)
from tests.scenarios import barge_in, listening_publisher  # noqa: E402
from tests.support import (  # noqa: E402
    HarkProcess,
    collect_until_closed,
    eventually,
    grpc_stub,
    publish,
    running_server,
)

STALL_S = 0.4
DRAIN_TIMEOUT_S = 2.0
MEDIA_TIMEOUT_S = 1.0


def loopback_only() -> None:
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


async def barge_in_ms() -> float:
    """SpeechStarted to the agent's audio falling silent at the player."""
    async with running_server() as app, grpc_stub(app) as stub:
        scene = await barge_in(app, stub)
    events, heard = scene.events, scene.heard
    speech = next(e for e in events if e.HasField("speech_started"))
    spoke_at = speech.time.seconds + speech.time.nanos / 1e9
    last_loud = loud(heard)[-1]
    quiet_at = next(f.time for f in heard if f.time > last_loud.time)
    return 1000 * (quiet_at - spoke_at)


async def media_timeout_ms() -> float:
    """A vanished publisher to MEDIA_TIMEOUT, minus the timeout itself."""
    async with running_server(media_timeout=MEDIA_TIMEOUT_S) as app, grpc_stub(app) as stub:
        publisher, watch = await listening_publisher(app, stub)
        gone = time.monotonic()
        await publisher.vanish()
        await collect_until_closed(watch, timeout=10)
        return 1000 * (time.monotonic() - gone - MEDIA_TIMEOUT_S)


async def stall_drift_ms() -> float:
    """RTP clock advance minus wall time at the player, across a 400 ms stalled loop."""
    async with running_server() as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        async with listening(app.base_url, session.id, token=session.token) as player:
            receiver = player.pc.getTransceivers()[0].receiver
            arrivals: list[tuple[float, int]] = []
            tap_opus_packets(
                receiver,
                opus_payload_type(player.answer),
                lambda _, timestamp: arrivals.append((time.monotonic(), timestamp)),
            )
            talking = asyncio.ensure_future(
                stub.PlayAudio(requests_of(play_requests(session.id, tone(440, 3.0))))
            )
            await eventually(lambda: len(loud(player.heard)) >= 50, "1 s of the tone is heard")
            time.sleep(STALL_S)  # the stall under measurement
            await talking
    (first_at, first_ts), (last_at, last_ts) = arrivals[0], arrivals[-1]
    media_s = ((last_ts - first_ts) % 2**32) / 48000
    return 1000 * (media_s - (last_at - first_at))


async def sigterm_exit_ms() -> float:
    """SIGTERM to exit with a listening session and a 2 s drain timeout, minus the timeout."""
    async with HarkProcess("--drain-timeout", str(DRAIN_TIMEOUT_S)) as hark:
        base = f"http://127.0.0.1:{hark.http_port}"
        publisher = await publish(base)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{hark.grpc_port}") as channel:
            stub = media_pb2_grpc.MediaServiceStub(channel)
            await stub.StartListening(
                pb.StartListeningRequest(session_id=publisher.session_id, wait_for_ready=True),
                timeout=10,
            )
        assert hark.proc is not None
        signalled = time.monotonic()
        hark.proc.send_signal(signal.SIGTERM)
        await hark.wait(timeout=30)
        elapsed = time.monotonic() - signalled
        await publisher.vanish()
    return 1000 * (elapsed - DRAIN_TIMEOUT_S)


MEASURES: list[tuple[str, Callable[[], Awaitable[float]]]] = [
    ("barge-in: SpeechStarted to the agent silent at the player", barge_in_ms),
    (f"media timeout: CLOSED after vanishing, beyond the {MEDIA_TIMEOUT_S:g} s", media_timeout_ms),
    (f"stalled loop ({1000 * STALL_S:.0f} ms): RTP clock minus wall time", stall_drift_ms),
    (f"SIGTERM: exit beyond the {DRAIN_TIMEOUT_S:g} s drain timeout", sigterm_exit_ms),
]


async def run(trials: int) -> None:
    loopback_only()
    print(f"{'measure':<62} {'median':>8} {'min':>8} {'max':>8}  (ms, {trials} trials)")
    for label, measure in MEASURES:
        results = [await measure() for _ in range(trials)]
        low, high = min(results), max(results)
        print(f"{label:<62} {statistics.median(results):8.0f} {low:8.0f} {high:8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.trials))


if __name__ == "__main__":
    main()
