"""aiortc glue for one WHEP player: a peer connection that sends one track, and its liveness.

A player is alive while it answers what it is sent with RTCP receiver reports; one that vanishes
without a DELETE stops reporting, and after ``media_timeout`` seconds without a report while
packets were going out it is reported gone, as is one not connected within ``connect_timeout``.
Owns its peer connection and watch task; ``close()`` ends both.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final

from aiortc import RTCPeerConnection, RTCRtpSender

from media.config import IceServer
from media.core.trickle import TrickleCandidate
from media.rtc.publisher import (
    RemoteCandidates,
    answer_audio_offer,
    close_peer_connection,
    rtc_configuration,
)
from media.rtc.tracks import PacketTrack

logger = logging.getLogger(__name__)

LIVENESS_POLL_S: Final = 1.0


class Source(enum.Enum):
    AGENT = "agent"
    PUBLISHER = "publisher"


class PlayerPeer:
    """Sends ``track`` to one WHEP player."""

    def __init__(
        self,
        session_id: str,
        player_id: str,
        source: Source,
        on_gone: Callable[[PlayerPeer, str], None],
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
        self._on_gone = on_gone
        self._media_timeout = media_timeout
        self._connect_timeout = connect_timeout
        self._pc = RTCPeerConnection(rtc_configuration(ice_servers))
        self._remote = RemoteCandidates(self._pc, f"{session_id}-{player_id}")
        self._sender: RTCRtpSender | None = None
        self._watch: asyncio.Task[None] | None = None
        self._closed = False
        self._close_done: asyncio.Future[None] | None = None
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
        self._watch = asyncio.get_running_loop().create_task(
            self._watch_liveness(self._sender), name=f"hark-player-watch-{self.id}"
        )
        return answer

    async def add_candidates(self, candidates: Sequence[TrickleCandidate], end: bool) -> None:
        await self._remote.add(candidates, end)

    async def close(self) -> None:
        """Stop the track, the watch task and the peer connection; safe to call again."""
        if self._close_done is not None:
            await asyncio.shield(self._close_done)
            return
        self._close_done = asyncio.get_running_loop().create_future()
        self._closed = True
        try:
            self.track.stop()
            if self._watch is not None:
                self._watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watch
            await self._remote.close()
            await close_peer_connection(self._pc)
        finally:
            self._close_done.set_result(None)

    def _gone(self, reason: str) -> None:
        if not self._closed:
            self._closed = True
            self._on_gone(self, reason)

    def _on_connection_state(self) -> None:
        if self._pc.connectionState == "failed":
            self._gone("CONNECTION_FAILED")
        elif self._pc.connectionState == "closed":
            self._gone("CONNECTION_CLOSED")  # the player closed its connection (DTLS close)

    async def _watch_liveness(self, sender: RTCRtpSender) -> None:
        loop = asyncio.get_running_loop()
        start = heard = loop.time()
        last_report: Any = None
        sent = 0
        while True:
            await asyncio.sleep(LIVENESS_POLL_S)
            now = loop.time()
            if self._pc.connectionState != "connected":
                heard = now
                if now - start > self._connect_timeout:
                    self._gone("CONNECTION_FAILED")
                    return
                continue
            for stats in (await sender.getStats()).values():
                kind = getattr(stats, "type", None)
                if kind == "outbound-rtp":
                    if stats.packetsSent == sent:
                        heard = now  # nothing went out, so no report is owed
                    sent = stats.packetsSent
                elif kind == "remote-inbound-rtp" and stats.timestamp != last_report:
                    last_report = stats.timestamp
                    heard = now
            if now - heard > self._media_timeout:
                self._gone("MEDIA_TIMEOUT")
                return
