"""Offer/answer and ICE for Hark's peer connections: the answer, trickled and mDNS candidates,
the ICE servers, why a connection failed, and a close that leaves nothing running."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from media.aio import cancel_and_wait
from media.config import IceServer
from media.core.sdp import stack_offer
from media.core.trickle import TrickleCandidate, is_mdns_candidate
from media.errors import HarkError, InvalidOffer, InvalidTrickle, UnsupportedOffer
from media.logs import session_logger
from media.rtc.compat import (
    ice_connections,
    start_nothing_once_closing,
    stop_orphaned_consent_checks,
)
from media.rtc.host_candidates import hark_gathering

logger = logging.getLogger(__name__)


def _ice_candidate(trickled: TrickleCandidate) -> Any:
    try:
        candidate = candidate_from_sdp(trickled.candidate.removeprefix("candidate:"))
    except (ValueError, IndexError) as exc:
        raise InvalidTrickle(f"unusable candidate {trickled.candidate!r}: {exc}") from exc
    candidate.sdpMid = trickled.mid
    candidate.sdpMLineIndex = trickled.mline_index
    return candidate


MAX_MDNS_LOOKUPS: Final = 16  # distinct .local candidates resolved per peer connection


def _lookup_key(candidate: Any) -> str:
    """The same name, port, transport and component is looked up once per connection."""
    return f"{candidate.ip} {candidate.port} {candidate.protocol} {candidate.component}"


class RemoteCandidates:
    """Adds a peer's candidates to ``pc``; mDNS ones are resolved concurrently in owned tasks.

    aioice resolves an mDNS name inside ``addIceCandidate`` and gives up after a second, so
    awaiting them would hold an answer or a trickle PATCH that long per name. Once an mDNS name
    was seen, end-of-candidates is not passed on: one that does not resolve from here must not
    end ICE while the peer can still reach Hark (peer-reflexive candidates); the connect timeout
    ends a connection that never forms. ``close()`` cancels and awaits what is still resolving.
    """

    def __init__(self, pc: RTCPeerConnection, name: str) -> None:
        self._pc = pc
        self._name = name
        self._resolving: set[asyncio.Task[None]] = set()
        self._looked_up: set[str] = set()
        self._saw_mdns = False

    async def add(self, candidates: Sequence[TrickleCandidate], end: bool) -> None:
        """Add trickled candidates; refuses (before adding any) a fragment that would take this
        peer past ``MAX_MDNS_LOOKUPS`` distinct mDNS candidates."""
        parsed = [(c, _ice_candidate(c)) for c in candidates]
        new_mdns = {
            _lookup_key(c) for t, c in parsed if is_mdns_candidate(t.candidate)
        } - self._looked_up
        if len(self._looked_up) + len(new_mdns) > MAX_MDNS_LOOKUPS:
            raise InvalidTrickle(
                f"too many mDNS candidates: at most {MAX_MDNS_LOOKUPS} distinct .local "
                f"candidates are resolved per connection ({len(self._looked_up)} so far, "
                f"{len(new_mdns)} more in this fragment)"
            )
        for trickled, candidate in parsed:
            if is_mdns_candidate(trickled.candidate):
                self._saw_mdns = True
                self._resolve_later(candidate)
            else:
                await self._pc.addIceCandidate(candidate)
        if end and not self._saw_mdns:
            await self._pc.addIceCandidate(None)

    def resolve_later(self, candidates: Sequence[TrickleCandidate]) -> None:
        """Resolve an offer's mDNS candidates after the answer (past the limit, the rest are left
        out: the connection can still form through peer-reflexive candidates)."""
        for trickled in candidates:
            self._saw_mdns = True
            self._resolve_later(_ice_candidate(trickled))

    def _resolve_later(self, candidate: Any) -> None:
        key = _lookup_key(candidate)
        if key in self._looked_up:
            return
        if len(self._looked_up) >= MAX_MDNS_LOOKUPS:
            logger.debug("%s: mDNS candidate over the limit left out", self._name)
            return
        self._looked_up.add(key)
        task = asyncio.get_running_loop().create_task(
            self._pc.addIceCandidate(candidate), name=f"hark-mdns-{self._name}"
        )
        self._resolving.add(task)
        task.add_done_callback(self._resolved)

    def _resolved(self, task: asyncio.Task[None]) -> None:
        self._resolving.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug(
                "%s: an mDNS candidate was not added", self._name, exc_info=task.exception()
            )

    async def close(self) -> None:
        await cancel_and_wait(*self._resolving)


async def answer_audio_offer(
    pc: RTCPeerConnection,
    offer_sdp: str,
    direction: str,
    session_id: str,
    remote: RemoteCandidates,
    prepare: Callable[[Any], None] | None = None,
) -> str:
    """Apply the offer and return the answer: its first audio m-line ``direction`` with Opus only
    (``prepare`` gets that transceiver first), every other m-line inactive. The offer's mDNS
    candidates go to ``remote`` to resolve after the answer."""
    try:
        offer = stack_offer(offer_sdp)
        await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
        audio = None
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "audio" and audio is None:
                transceiver.direction = direction
                audio = transceiver
            else:
                transceiver.direction = "inactive"
        if audio is None:
            raise UnsupportedOffer("offer has no audio m-line")
        if prepare is not None:
            prepare(audio)
        with hark_gathering():
            await pc.setLocalDescription(await pc.createAnswer())
    except HarkError:
        raise
    except Exception as exc:
        # aiortc reports what it cannot use in an offer with assorted exception types, whose
        # text means nothing to a client; check_offer is where offers get precise reasons.
        log = session_logger(logger, session_id)
        log.info("offer rejected by aiortc: %s", type(exc).__name__)
        log.debug("aiortc's exception", exc_info=True)
        raise InvalidOffer(
            "SDP offer could not be applied: it passed Hark's checks but the WebRTC stack "
            "refused it"
        ) from exc
    remote.resolve_later(offer.mdns_candidates)
    return str(pc.localDescription.sdp)


async def close_peer_connection(pc: RTCPeerConnection) -> None:
    """Close ``pc`` and whatever aiortc and aioice leave running after it.

    See ``start_nothing_once_closing`` and ``stop_orphaned_consent_checks``.
    """
    start_nothing_once_closing(pc)
    connections = ice_connections(pc)
    await pc.close()
    await stop_orphaned_consent_checks(connections)


def rtc_configuration(ice_servers: Sequence[IceServer]) -> RTCConfiguration:
    return RTCConfiguration(
        iceServers=[RTCIceServer(s.url, s.username, s.credential) for s in ice_servers]
    )


def transport_failure(pc: RTCPeerConnection) -> str:
    """Which layer of a failed connection gave up, in words for ``close_detail``."""
    if pc.iceConnectionState == "failed":
        return "ICE failed: no candidate pair reached the peer"
    if any(t.receiver.transport.state == "failed" for t in pc.getTransceivers()):
        return "DTLS failed: the handshake with the peer did not complete"
    return "the connection failed"
