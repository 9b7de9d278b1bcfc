"""Tracks that hand aiortc ready-made Opus packets, so one encode (or none) serves every player.

aiortc's ``RTCRtpSender`` sends an ``av.Packet`` as it is (it re-encodes only ``Frame``s), and
reads nothing from the packet but its bytes, ``pts`` and ``time_base``: one packet object can be
given to any number of tracks.
"""

from __future__ import annotations

import asyncio
import fractions
from collections import deque
from typing import Any, Final, TypeAlias

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.packet import Packet

OpusPacket: TypeAlias = "Packet[Any]"  # generic only in PyAV's stubs
OPUS_TIME_BASE: Final = fractions.Fraction(1, 48000)
TRACK_QUEUE_PACKETS: Final = 10  # 200 ms: a sender further behind than that loses the oldest
SENDING_GAP_S: Final = 1.0  # a longer pause between two packets ends a run of sending


def opus_packet(payload: bytes, pts: int) -> OpusPacket:
    packet = Packet(payload)
    packet.pts = pts
    packet.time_base = OPUS_TIME_BASE
    return packet


class PacketTrack(MediaStreamTrack):
    """An audio track fed with Opus packets by ``push``; a slow reader loses the oldest ones."""

    kind = "audio"

    def __init__(self, limit: int = TRACK_QUEUE_PACKETS) -> None:
        super().__init__()
        self._packets: deque[OpusPacket] = deque()
        self._limit = limit
        self._wake = asyncio.Event()
        self._reading = False
        self._last_sent: float | None = None
        self._sending_since = 0.0

    def push(self, packet: OpusPacket) -> int:
        """Queue ``packet``; returns how many older packets it pushed out (0 or 1).

        Until the sender first reads (its transport is up) nothing is queued: a player that
        connects gets the audio of now, not a burst of what played while it was connecting.
        """
        if self.readyState != "live" or not self._reading:
            return 0
        lost = 0
        if len(self._packets) >= self._limit:
            self._packets.popleft()
            lost = 1
        self._packets.append(packet)
        self._wake.set()
        return lost

    async def recv(self) -> OpusPacket:
        self._reading = True
        while not self._packets:
            if self.readyState != "live":
                raise MediaStreamError
            self._wake.clear()
            await self._wake.wait()
        self._sent(asyncio.get_running_loop().time())
        return self._packets.popleft()

    def sending_since(self, now: float) -> float | None:
        """When the current run of packets handed to the sender began (loop time); None when
        nothing was sent in the last ``SENDING_GAP_S``."""
        if self._last_sent is None or now - self._last_sent > SENDING_GAP_S:
            return None
        return self._sending_since

    def _sent(self, now: float) -> None:
        if self._last_sent is None or now - self._last_sent > SENDING_GAP_S:
            self._sending_since = now
        self._last_sent = now

    def flush(self) -> None:
        """Drop the packets not yet read."""
        self._packets.clear()

    def stop(self) -> None:
        super().stop()
        self._packets.clear()
        self._wake.set()
