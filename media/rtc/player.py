"""aiortc glue for one WHEP player: a peer connection that sends one track, and its liveness.

A player is alive while it answers what it is sent with RTCP receiver reports; one that vanishes
without a DELETE stops reporting, and after ``media_timeout`` seconds without a report while
packets were going out it is reported gone, as is one not connected within ``connect_timeout``.
Nothing polls: one timer is armed for the moment the player would be late, and checks aiortc's
public sender stats when it fires. Owns its peer connection, timer and check; ``close()`` ends them.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import logging
import math
from collections.abc import Sequence
from typing import Any, Final, Protocol

from aiortc import RTCPeerConnection, RTCRtpSender

from media.aio import CloseOnce, cancel_and_wait
from media.config import IceServer
from media.core.trickle import TrickleCandidate
from media.rtc.negotiation import (
    RemoteCandidates,
    answer_audio_offer,
    close_peer_connection,
    rtc_configuration,
)
from media.rtc.tracks import PacketTrack

logger = logging.getLogger(__name__)

RECHECK_MARGIN_S: Final = 0.05


class Source(enum.Enum):
    AGENT = "agent"
    PUBLISHER = "publisher"


class PlayerEvents(Protocol):
    """What a player peer reports, to an object bound to its session and player."""

    def gone(self, reason: str) -> None:
        """The player went away without a DELETE (``reason`` as in hark_whep_players_closed)."""


def _seconds_since(report: Any) -> float:
    """Age of an aiortc stats entry, whose timestamps are UTC datetimes."""
    age: datetime.timedelta = datetime.datetime.now(datetime.UTC) - report.timestamp
    return age.total_seconds()


class PlayerPeer:
    """Sends ``track`` to one WHEP player."""

    def __init__(
        self,
        session_id: str,
        player_id: str,
        source: Source,
        events: PlayerEvents,
        *,
        ice_servers: Sequence[IceServer] = (),
        media_timeout: float = 15.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.session_id = session_id
        self.id = player_id
        self.source = source
        self.track = PacketTrack()
        self.etag = ""
        self.remote_ice: tuple[str, str | None] = ("", None)
        self._events = events
        self._media_timeout = media_timeout
        self._connect_timeout = connect_timeout
        self._pc = RTCPeerConnection(rtc_configuration(ice_servers))
        self._remote = RemoteCandidates(self._pc, f"{session_id}-{player_id}")
        self._sender: RTCRtpSender | None = None
        self._started = 0.0
        self._connected_at: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._check: asyncio.Task[None] | None = None
        self._closed = False
        self._close_once = CloseOnce()
        self._pc.on("connectionstatechange", self._on_connection_state)

    async def negotiate(self, offer_sdp: str) -> str:
        """Apply a ``recvonly`` offer; the answer sends the track, Opus only, other media off."""

        def send_track(transceiver: Any) -> None:
            transceiver.sender.replaceTrack(self.track)
            self._sender = transceiver.sender

        answer = await answer_audio_offer(
            self._pc, offer_sdp, "sendonly", self.session_id, self._remote, send_track
        )
        assert self._sender is not None
        if not self._closed:
            self._started = asyncio.get_running_loop().time()
            self._check_in(self._connect_timeout)
        return answer

    async def add_candidates(self, candidates: Sequence[TrickleCandidate], end: bool) -> None:
        await self._remote.add(candidates, end)

    async def close(self) -> None:
        """Stop the track, the liveness timer and the peer connection; safe to call again."""
        await self._close_once.run(self._close)

    async def _close(self) -> None:
        self._closed = True
        self.track.stop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._check is not None:
            await cancel_and_wait(self._check)
        await self._remote.close()
        await close_peer_connection(self._pc)

    def _gone(self, reason: str) -> None:
        if not self._closed:
            self._closed = True
            self._events.gone(reason)

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        if state == "connected" and self._connected_at is None:
            self._connected_at = asyncio.get_running_loop().time()
            if not self._closed:
                self._check_in(self._media_timeout)  # from now on, the media timeout counts
        elif state == "failed":
            self._gone("CONNECTION_FAILED")
        elif state == "closed":
            self._gone("CONNECTION_CLOSED")  # the player closed its connection (DTLS close)

    def _check_in(self, delay: float) -> None:
        """(Re-)arm the one liveness timer."""
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(delay, 0.0) + RECHECK_MARGIN_S, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._closed:
            self._check = asyncio.get_running_loop().create_task(
                self._check_liveness(), name=f"hark-player-liveness-{self.id}"
            )

    async def _check_liveness(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._pc.connectionState != "connected":
            connect_deadline = self._started + self._connect_timeout
            if now >= connect_deadline:
                self._gone("CONNECTION_FAILED")
            else:
                self._check_in(connect_deadline - now)
            return
        silence = min(now - self._report_owed_since(now), await self._report_age())
        if silence > self._media_timeout:
            self._gone("MEDIA_TIMEOUT")
        elif not self._closed:
            self._check_in(self._media_timeout - silence)

    def _report_owed_since(self, now: float) -> float:
        """Since when the player owes a receiver report: packets have been going out since then."""
        sending_since = self.track.sending_since(now)
        if sending_since is None:
            return now  # nothing went out lately, so no report is owed
        return max(sending_since, self._connected_at or now)

    async def _report_age(self) -> float:
        assert self._sender is not None
        for stats in (await self._sender.getStats()).values():
            if getattr(stats, "type", None) == "remote-inbound-rtp":
                return _seconds_since(stats)
        return math.inf
