"""SFU-style forwarding: the publisher's Opus packets, as received, to every ``source=publisher``
player of the session; nothing is decoded or encoded per player."""

from __future__ import annotations

from media.core.rtp_clock import TimestampUnwrapper
from media.metrics import Metrics
from media.rtc.tracks import PacketTrack, opus_packet


class PublisherRelay:
    """Hands each Opus packet the publisher sends to every relay player's track."""

    def __init__(self, metrics: Metrics) -> None:
        self._tracks: set[PacketTrack] = set()
        self._clock = TimestampUnwrapper()
        self._metrics = metrics

    @property
    def has_players(self) -> bool:
        return bool(self._tracks)

    def add_player(self, track: PacketTrack) -> None:
        self._tracks.add(track)

    def remove_player(self, track: PacketTrack) -> None:
        self._tracks.discard(track)

    def forward(self, payload: bytes, timestamp: int) -> None:
        self._metrics.publisher_packets_tapped.inc()
        pts = self._clock.unwrap(timestamp)
        if not self._tracks:
            return
        packet = opus_packet(payload, pts)
        lost = 0
        for track in self._tracks:
            lost += track.push(packet)
        self._metrics.relayed_packets.inc(len(self._tracks))
        if lost:
            self._metrics.player_packets_dropped.inc(lost)

    def close(self) -> None:
        for track in self._tracks:
            track.stop()
        self._tracks.clear()
