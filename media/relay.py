"""SFU-style forwarding: the publisher's Opus packets, as received, to every ``source=publisher``
player of the session; nothing is decoded or encoded per player."""

from __future__ import annotations

from typing import Final

from media.metrics import Metrics
from media.tracks import PacketTrack, opus_packet

_WRAP: Final = 1 << 32
_HALF: Final = 1 << 31


class TimestampUnwrapper:
    """32-bit RTP timestamps → a count that does not wrap, 0 at the first packet. Pure.

    A late (reordered) packet unwraps to a value before its successor's; crossing 2**32 is no jump.
    """

    def __init__(self) -> None:
        self._last: int | None = None
        self._extended = 0

    def unwrap(self, timestamp: int) -> int:
        if self._last is None:
            self._last = timestamp
            return 0
        delta = (timestamp - self._last) % _WRAP
        if delta >= _HALF:
            delta -= _WRAP
        value = self._extended + delta
        if delta > 0:
            self._last = timestamp
            self._extended = value
        return value


class PublisherRelay:
    """Hands each Opus packet the publisher sends to every relay player's track."""

    def __init__(self, metrics: Metrics) -> None:
        self._tracks: set[PacketTrack] = set()
        self._clock = TimestampUnwrapper()
        self._metrics = metrics

    @property
    def player_count(self) -> int:
        return len(self._tracks)

    def add_player(self, track: PacketTrack) -> None:
        self._tracks.add(track)

    def remove_player(self, track: PacketTrack) -> None:
        self._tracks.discard(track)

    def forward(self, payload: bytes, timestamp: int) -> None:
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
