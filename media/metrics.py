"""Every Prometheus metric Hark exports, defined once. No label ever carries a session id.

Each server gets its own ``CollectorRegistry`` (so several servers in one process, as in the
tests, do not share counts), with the standard process, platform and GC collectors added.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from media import __version__
from media.core.events import (
    CloseReason,
    InterruptReason,
    PlaybackFinished,
    PlaybackInterrupted,
    SessionEvent,
    SessionState,
    SpeechEnded,
    StateChanged,
)
from media.core.playback_queue import PlaybackQueue
from media.core.session import Session

# A *_created series per counter and histogram doubles the exposition and says nothing
# rate() and increase() need.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOOP_LAG_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
RPC_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0)
JITTER_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)
LOOP_LAG_INTERVAL_S: Final = 0.1
PLAYER_SOURCES: Final = ("agent", "publisher")
REFUSAL_REASONS: Final = ("overloaded", "max_sessions", "draining")
PLAYER_CLOSE_REASONS: Final = (
    "DELETE",
    "CONNECTION_CLOSED",
    "MEDIA_TIMEOUT",
    "CONNECTION_FAILED",
    "SESSION_CLOSED",
)


class _SessionCollector(Collector):
    """Gauges read from the registry at scrape time."""

    def __init__(self, sessions: Callable[[], Iterable[Session]]) -> None:
        self._sessions = sessions

    def collect(self) -> Iterable[Metric]:
        by_state = {state: 0 for state in SessionState if state is not SessionState.CLOSED}
        listening = 0
        for session in self._sessions():
            if session.state in by_state:
                by_state[session.state] += 1
                listening += session.listening
        states = GaugeMetricFamily(
            "hark_sessions",
            "Live sessions by state (closed ones are not counted).",
            labels=["state"],
        )
        for state, count in by_state.items():
            states.add_metric([state.name], count)
        yield states
        yield GaugeMetricFamily(
            "hark_sessions_listening", "Live sessions that are listening.", value=listening
        )

    def describe(self) -> Iterable[Metric]:
        return []


class _PlaybackQueueCollector(Collector):
    """Agent audio waiting to be played, read from the live sessions' queues at scrape time."""

    def __init__(self, queues: Callable[[], Iterable[PlaybackQueue]]) -> None:
        self._queues = queues

    def collect(self) -> Iterable[Metric]:
        queued = [queue.queued_ms / 1000 for queue in self._queues()]
        yield GaugeMetricFamily(
            "hark_playback_queued_seconds",
            "Agent audio received and not played yet, over every live session.",
            value=sum(queued),
        )
        yield GaugeMetricFamily(
            "hark_playback_queue_max_seconds",
            "The longest queue of agent audio of any live session (see --max-playback-queue-s).",
            value=max(queued, default=0.0),
        )

    def describe(self) -> Iterable[Metric]:
        return []


class ReceivedTraffic(Collector):
    """Packets and bytes received from publishers, as aiortc's own stats count them.

    Read at scrape time and once more when a publisher is released (``note``) rather than
    counted per packet; a session's last reading is kept once it is gone, so the totals never go
    down.
    """

    def __init__(self) -> None:
        self._gone = (0, 0)
        self._live: dict[str, tuple[int, int]] = {}

    def note(self, session_id: str, packets: int, octets: int) -> None:
        """A reading of one publisher's totals (RTP packets, bytes) so far."""
        before_packets, before_octets = self._live.get(session_id, (0, 0))
        self._live[session_id] = (max(packets, before_packets), max(octets, before_octets))

    def keep_only(self, session_ids: Iterable[str]) -> None:
        """Fold the last reading of every session not in ``session_ids`` into the gone total."""
        keep = set(session_ids)
        packets, octets = self._gone
        for session_id in [s for s in self._live if s not in keep]:
            gone_packets, gone_octets = self._live.pop(session_id)
            packets, octets = packets + gone_packets, octets + gone_octets
        self._gone = (packets, octets)

    def collect(self) -> Iterable[Metric]:
        packets = self._gone[0] + sum(p for p, _ in self._live.values())
        octets = self._gone[1] + sum(b for _, b in self._live.values())
        yield CounterMetricFamily(
            "hark_rtp_packets_received",
            "RTP packets received from publishers (aiortc's receiver stats, read at scrape time).",
            value=packets,
        )
        yield CounterMetricFamily(
            "hark_received_bytes",
            "Bytes received on publishers' transports: SRTP, SRTCP and DTLS (read at scrape time).",
            value=octets,
        )

    def describe(self) -> Iterable[Metric]:
        return []


class LocalCounter(Collector):
    """A counter kept as a plain number where the media path counts (per frame or message) and
    published at scrape time: no Prometheus call or lock on that path. Same exposition as a
    ``Counter`` named ``name``."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self.value = 0.0
        registry.register(self)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, value=self.value)

    def describe(self) -> Iterable[Metric]:
        return []


class DecodeCounts(Collector):
    """Audio frames decoded and packets refused, counted per packet as plain ints (cheaper than a
    Prometheus counter) and published at scrape time."""

    def __init__(self) -> None:
        self.frames = 0
        self.errors = 0

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "hark_audio_frames_decoded", "Audio frames decoded from publishers.", value=self.frames
        )
        yield CounterMetricFamily(
            "hark_audio_decode_errors",
            "Audio packets that could not be decoded.",
            value=self.errors,
        )

    def describe(self) -> Iterable[Metric]:
        return []


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        Info("hark_build", "The running Hark's version.", registry=r).info({"version": __version__})
        self.received = ReceivedTraffic()
        r.register(self.received)
        self.whip_post_duration = Histogram(
            "hark_whip_post_duration_seconds",
            "From a WHIP POST arriving to its 201 answer (ICE gathering included).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sessions_created = Counter(
            "hark_sessions_created", "Sessions created, by origin.", ["origin"], registry=r
        )
        self.sessions_closed = Counter(
            "hark_sessions_closed", "Sessions closed, by close reason.", ["reason"], registry=r
        )
        self.time_to_ready = Histogram(
            "hark_time_to_ready_seconds",
            "From the offer being answered to the first decoded audio frame.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.http_requests = Counter(
            "hark_http_requests",
            "HTTP requests by route, method and status code.",
            ["route", "method", "code"],
            registry=r,
        )
        self.http_connections_refused = Counter(
            "hark_http_connections_refused",
            "HTTP connections refused over --max-connections-per-ip or --max-connections.",
            registry=r,
        )
        self.client_errors_unlogged = Counter(
            "hark_http_client_errors_unlogged",
            "Refused HTTP requests left out of the log (over its budget of about 5 lines a "
            "second); every one is still counted in hark_http_requests_total.",
            registry=r,
        )
        self.grpc_requests = Counter(
            "hark_grpc_requests",
            "gRPC calls by method and status code.",
            ["method", "code"],
            registry=r,
        )
        self.grpc_duration = Histogram(
            "hark_grpc_unary_duration_seconds",
            "Duration of unary gRPC calls.",
            ["method"],
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self.watch_streams = Gauge(
            "hark_watch_streams", "Open WatchSession and WatchSessions streams.", registry=r
        )
        self.audio_subscribers = Gauge(
            "hark_audio_subscribers", "Open StreamAudio streams.", registry=r
        )
        self.decoded = DecodeCounts()
        r.register(self.decoded)
        self.rtp_packets_lost = Counter(
            "hark_rtp_packets_lost", "RTP packets lost on the way in (receiver stats).", registry=r
        )
        self.rtp_jitter = Histogram(
            "hark_rtp_jitter_seconds",
            "Interarrival jitter of incoming audio (receiver stats), one sample per publisher at "
            "each scrape of /metrics.",
            buckets=JITTER_BUCKETS,
            registry=r,
        )
        self.vad_segments = Counter(
            "hark_vad_segments", "Speech segments detected (SpeechEnded events).", registry=r
        )
        self.speech_seconds = Counter(
            "hark_vad_speech_seconds", "Seconds of speech in detected segments.", registry=r
        )
        self.discarded_bursts = Counter(
            "hark_vad_discarded_bursts", "Voiced bursts shorter than min_speech_ms.", registry=r
        )
        self.udp_mux_dropped = Counter(
            "hark_udp_mux_dropped",
            "Datagrams the --udp-port demultiplexer dropped (delivered to no session), by cause.",
            ["cause"],
            registry=r,
        )
        self.udp_mux_entries = Gauge(
            "hark_udp_mux_entries",
            "Entries in the --udp-port demultiplexer's routing tables.",
            registry=r,
        )
        self.audio_dropped = LocalCounter(
            "hark_stream_audio_dropped_seconds",
            "Audio dropped for StreamAudio subscribers that read too slowly.",
            registry=r,
        )
        self.loop_lag = Histogram(
            "hark_event_loop_lag_seconds",
            f"How late a {LOOP_LAG_INTERVAL_S:g} s timer fires on the event loop.",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        self.loop_lag_mean = Gauge(
            "hark_event_loop_lag_mean_seconds",
            "Mean event-loop lag over the admission window (what --max-loop-lag-ms is held to).",
            registry=r,
        )
        self.overloaded = Gauge(
            "hark_overloaded",
            "1 while new sessions are refused because the event loop lags (--max-loop-lag-ms).",
            registry=r,
        )
        self.sessions_refused = Counter(
            "hark_sessions_refused",
            "New sessions refused (WHIP POST 503, CreateSession RESOURCE_EXHAUSTED), by reason.",
            ["reason"],
            registry=r,
        )
        self.max_sessions = Gauge(
            "hark_max_sessions", "The --max-sessions limit, for capacity alerts.", registry=r
        )
        self.rate_limited = Counter(
            "hark_http_rate_limited",
            "HTTP requests refused with 429, by route.",
            ["route"],
            registry=r,
        )
        self.players = Gauge(
            "hark_whep_players",
            "Connected WHEP players, by source (agent audio or the publisher's own).",
            ["source"],
            registry=r,
        )
        self.players_closed = Counter(
            "hark_whep_players_closed",
            "WHEP players that went away, by reason.",
            ["reason"],
            registry=r,
        )
        self.playbacks = Counter(
            "hark_playbacks",
            "Agent playbacks ended, by outcome (FINISHED or what interrupted them).",
            ["outcome"],
            registry=r,
        )
        self.played_seconds = Counter(
            "hark_playback_played_seconds",
            "Agent audio played (sent to the WHEP players connected at the time, if any).",
            registry=r,
        )
        self.playback_frames = Counter(
            "hark_playback_frames",
            "20 ms frames of agent audio played (with the frame that fades out audio cut short).",
            registry=r,
        )
        self.relayed_packets = Counter(
            "hark_relayed_packets",
            "Publisher packets forwarded to source=publisher players (one per player).",
            registry=r,
        )
        self.publisher_packets_tapped = Counter(
            "hark_publisher_packets_tapped",
            "Publisher Opus packets read for source=publisher players (publishers are read only "
            "once such a player joins).",
            registry=r,
        )
        self.player_packets_dropped = Counter(
            "hark_whep_packets_dropped",
            "Packets a WHEP player's sender fell too far behind to send.",
            registry=r,
        )
        for source in PLAYER_SOURCES:
            self.players.labels(source)
        for player_reason in PLAYER_CLOSE_REASONS:
            self.players_closed.labels(player_reason)
        for outcome in ("FINISHED", *(r.name for r in InterruptReason)):
            self.playbacks.labels(outcome)
        for reason in CloseReason:
            self.sessions_closed.labels(reason.name)
        for refusal in REFUSAL_REASONS:
            self.sessions_refused.labels(refusal)
        for origin in ("WHIP", "API"):
            self.sessions_created.labels(origin)

    def watch_sessions(self, sessions: Callable[[], Iterable[Session]]) -> None:
        self.registry.register(_SessionCollector(sessions))

    def watch_playback_queues(self, queues: Callable[[], Iterable[PlaybackQueue]]) -> None:
        self.registry.register(_PlaybackQueueCollector(queues))

    def observe_receiver(
        self, session_id: str, packets: int, octets: int, lost_since_last: int
    ) -> None:
        """One reading of a publisher's receiver stats (at a scrape, or when it is released)."""
        self.received.note(session_id, packets, octets)
        self.rtp_packets_lost.inc(lost_since_last)

    def observe_event(self, event: SessionEvent, session: Session) -> None:
        payload = event.payload
        if isinstance(payload, StateChanged):
            if payload.state is SessionState.NEW:
                self.sessions_created.labels(session.origin.name).inc()
            elif payload.state is SessionState.READY:
                connecting = session.connecting_time
                if connecting is not None:
                    self.time_to_ready.observe(max(0.0, event.time - connecting))
            elif payload.state is SessionState.CLOSED and payload.close_reason is not None:
                self.sessions_closed.labels(payload.close_reason.name).inc()
        elif isinstance(payload, SpeechEnded):
            self.vad_segments.inc()
            self.speech_seconds.inc(payload.duration_ms / 1000)
        elif isinstance(payload, PlaybackFinished):
            self.playbacks.labels("FINISHED").inc()
            self.played_seconds.inc(payload.played_ms / 1000)
        elif isinstance(payload, PlaybackInterrupted):
            self.playbacks.labels(payload.reason.name).inc()
            self.played_seconds.inc(payload.played_ms / 1000)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def sample_loop_lag(self, on_lag: Callable[[float], None] | None = None) -> None:
        """Runs until cancelled: the first sign of an overloaded asyncio media server.

        ``on_lag`` gets every sample too (the admission governor).
        """
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + LOOP_LAG_INTERVAL_S
            await asyncio.sleep(LOOP_LAG_INTERVAL_S)
            lag = max(0.0, loop.time() - expected)
            self.loop_lag.observe(lag)
            if on_lag is not None:
                on_lag(lag)
