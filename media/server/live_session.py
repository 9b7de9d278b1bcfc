"""The home of one live session: its core ``Session``, publisher peer, speech pipeline, agent
voice, relay and players, the rules that tie them together, and one idempotent ``aclose()``.

Peers report to methods bound to it (``PublisherEvents``, player ``gone``), so nothing looks a
session up by id per frame. Every event it causes goes to its own watchers and then to
``on_events`` (the session table: every-session watchers, metrics, deadlines).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Protocol

from media.aio import CloseOnce, cancel_and_wait
from media.audio.opus_input import OpusInput, RtpPacket
from media.audio.speech_pipeline import SpeechEvent, SpeechPipeline
from media.core.clock import Clock
from media.core.events import (
    CloseReason,
    EndReason,
    InterruptReason,
    PlaybackEvent,
    SessionEvent,
    SpeechStarted,
)
from media.core.segmenter import SegmenterConfig
from media.core.session import Session, SessionSnapshot
from media.core.speech_settings import SpeechSettings
from media.errors import CapacityExceeded, SessionClosed
from media.logs import session_logger
from media.metrics import Metrics
from media.rtc.agent_voice import AgentVoice
from media.rtc.player import PlayerPeer, Source
from media.rtc.publisher import ReceiverReading
from media.rtc.relay import PublisherRelay
from media.server.watch import Subscription

logger = logging.getLogger(__name__)


class PublisherConnection(Protocol):
    """What a live session needs of its publisher's peer connection."""

    async def read_stats(self) -> ReceiverReading: ...

    async def close(self) -> None: ...


class BoundPlayerEvents:
    """One player's reports, bound to its session and its id."""

    def __init__(self, live: LiveSession, player_id: str) -> None:
        self._live = live
        self._player_id = player_id

    def gone(self, reason: str) -> None:
        """The player's liveness rule gave up on it, or its connection ended."""
        self._live.remove_player(self._player_id, reason)


class LiveSession:
    """One live session and everything it owns. Runs on the event loop."""

    def __init__(
        self,
        session: Session,
        *,
        clock: Clock,
        metrics: Metrics,
        speech: SpeechSettings,
        on_events: Callable[[LiveSession, list[SessionEvent]], None],
        token: str | None = None,
        max_players: int = 8,
        max_playback_queue_ms: int = 60_000,
        reorder_frames: int = 1,
    ) -> None:
        self.session = session
        self.id = session.id
        self.token = token
        self.etag = ""
        self.log = session_logger(logger, session.id)
        self.publisher: PublisherConnection | None = None
        self.players: dict[str, PlayerPeer] = {}
        self.watchers: set[Subscription] = set()
        self.speech = speech
        self._clock = clock
        self._metrics = metrics
        self._on_events = on_events
        self._max_players = max_players
        self.pipeline = SpeechPipeline(speech, self._speech_event, metrics)
        self._input = OpusInput(
            speech.sample_rate, reorder_frames, self.pipeline.push, metrics.decoded
        )
        self.voice = AgentVoice(session.id, self._playback_events, metrics, max_playback_queue_ms)
        self.relay = PublisherRelay(metrics)
        self._releasing: set[asyncio.Task[None]] = set()
        self._close_once = CloseOnce()

    @property
    def closed(self) -> bool:
        return self.session.closed

    @property
    def watcher_count(self) -> int:
        return len(self.watchers)

    def snapshot(self) -> SessionSnapshot:
        return self.session.snapshot()

    def check_open(self) -> None:
        """Raise ``SessionClosed`` (naming the reason) once the session is closed."""
        session = self.session
        if session.closed:
            assert session.close_reason is not None
            raise SessionClosed(self.id, session.close_reason.name, session.close_detail)

    # the publisher (media.rtc.publisher's PublisherEvents, bound to this session)

    def attach_publisher(self, publisher: PublisherConnection, etag: str) -> None:
        """An offer was answered: ``NEW → CONNECTING``; raises if the session cannot take it."""
        events = self.session.publisher_attached(self._clock.now())
        self.publisher = publisher
        self.etag = etag
        self._publish(events)

    def transport_connected(self) -> None:
        self._publish(self.session.transport_connected(self._clock.now()))

    def transport_failed(self, detail: str) -> None:
        self.close(CloseReason.ICE_FAILED, detail)

    def internal_error(self, detail: str) -> None:
        self.close(CloseReason.ERROR, detail)

    def opus_received(self, packet: RtpPacket) -> None:
        """A packet of the publisher's audio: relayed as it is, decoded (in order) for the VAD.
        Media arrival and READY come from what it decodes to."""
        if self.session.closed:
            return
        if self.relay.has_players:
            self.relay.forward(packet.payload, packet.timestamp)
        if self._input.push(packet):
            events = self.session.audio_decoded(self._clock.now())
            if events:
                self._publish(events)

    # listening

    def start_listening(
        self, segmenter: SegmenterConfig | None = None, aggressiveness: int | None = None
    ) -> SessionSnapshot:
        """Listen (idempotent; needs READY); the VAD overrides apply when listening starts."""
        events = self.session.set_listening(True, self._clock.now())
        if events:
            self._publish(events)
            self.pipeline.start(
                segmenter or self.speech.segmenter,
                self.speech.aggressiveness if aggressiveness is None else aggressiveness,
            )
        return self.session.snapshot()

    def stop_listening(self) -> SessionSnapshot:
        if not self.session.closed:
            self.pipeline.stop(EndReason.STOPPED)
        self._publish(self.session.set_listening(False, self._clock.now()))
        return self.session.snapshot()

    def _speech_event(self, event: SpeechEvent) -> None:
        self._publish(self.session.speech(event, self._clock.now()))
        if isinstance(event, SpeechStarted) and self.session.listening:
            self.voice.interrupt(InterruptReason.USER_SPEECH)  # barge-in

    def _playback_events(self, events: list[PlaybackEvent]) -> None:
        self._publish(self.session.playback(events, self._clock.now()))

    # WHEP players

    def check_player_room(self) -> None:
        if len(self.players) >= self._max_players:
            raise CapacityExceeded(
                f"session {self.id!r} has {len(self.players)} WHEP players "
                f"(--max-players-per-session {self._max_players})",
                retry_after_s=5,
            )

    def add_player(self, player: PlayerPeer) -> None:
        """Attach a negotiated player (the caller closes it if this raises)."""
        self.check_open()
        self.check_player_room()
        self.players[player.id] = player
        if player.source is Source.AGENT:
            self.voice.add_player(player.track)
        else:
            self.relay.add_player(player.track)
        self._metrics.players.labels(player.source.value).inc()
        self.log.info("WHEP player %s (%s) joined", player.id, player.source.value)

    def remove_player(self, player_id: str, reason: str) -> None:
        player = self.players.pop(player_id, None)
        if player is None:
            return
        self.voice.remove_player(player.track)
        self.relay.remove_player(player.track)
        self._metrics.players.labels(player.source.value).dec()
        self._metrics.players_closed.labels(reason).inc()
        self.log.info("WHEP player %s left (%s)", player_id, reason)
        self._release(player.close(), f"hark-close-player-{player_id}")

    def player_events(self, player_id: str) -> BoundPlayerEvents:
        """What player ``player_id``'s peer reports to (rtc's ``PlayerEvents``)."""
        return BoundPlayerEvents(self, player_id)

    # liveness and closing

    def handle_timer(self, loop_stalled: Callable[[float], float] | None) -> None:
        """Close with the timeout that has run out now, if any (ask ``next_deadline`` again)."""
        due = self.session.due_timeout(self._clock.now(), loop_stalled)
        if due is not None:
            self.close(*due)

    def close(self, reason: CloseReason, detail: str = "") -> None:
        """Close (idempotent): speech and playback end first, so their last events precede
        ``CLOSED``; ``aclose()`` then releases the media."""
        if self.session.closed:
            return
        self.pipeline.close()
        self._input.close()
        self.voice.shut()
        events = self.session.close(reason, detail, self._clock.now())
        self.log.info("closed %s %s", reason.name, detail)
        self._publish(events)

    async def aclose(self) -> None:
        """Close with ``SHUTDOWN`` if still open, then release the publisher, the players, the
        relay and the agent voice. Safe to call more than once, also concurrently."""
        await self._close_once.run(self._release_everything)

    async def _release_everything(self) -> None:
        try:
            self.close(CloseReason.SHUTDOWN, "server shutting down")
            for player_id in list(self.players):
                self.remove_player(player_id, "SESSION_CLOSED")
            self.relay.close()
            if self.publisher is not None:
                await self._last_reading(self.publisher)
            publisher, self.publisher = self.publisher, None
            if publisher is not None:
                self._release(publisher.close(), f"hark-close-publisher-{self.id}")
            self._release(self.voice.close(), f"hark-close-voice-{self.id}")
            while self._releasing:
                await asyncio.wait(set(self._releasing))
        except asyncio.CancelledError:
            await cancel_and_wait(*self._releasing)
            raise

    async def _last_reading(self, publisher: PublisherConnection) -> None:
        """What the publisher sent since the last scrape still counts once it is released."""
        reading = await publisher.read_stats()
        self._metrics.observe_receiver(
            self.id, reading.packets, reading.octets, reading.lost_since_last
        )

    def _release(self, closing: Coroutine[None, None, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(closing, name=name)
        self._releasing.add(task)
        task.add_done_callback(self._released)

    def _released(self, task: asyncio.Task[None]) -> None:
        self._releasing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.warning("%s failed", task.get_name(), exc_info=task.exception())

    def _publish(self, events: list[SessionEvent]) -> None:
        if not events:
            return
        for event in events:
            for subscription in self.watchers:
                subscription.push(event)
        self._on_events(self, events)
