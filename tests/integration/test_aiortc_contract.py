"""What Hark relies on in aiortc beyond its public API; fails loudly when an upgrade changes it."""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import socket
from collections.abc import Iterator

import aiohttp
import aioice.ice
import pytest
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.contrib.media import MediaPlayer
from aiortc.rtp import RtpPacket
from prometheus_client.parser import text_string_to_metric_families

from media.rtc import compat
from media.rtc.compat import (
    Hook,
    keep_consent_through_stalls,
    receive_rtp_directly,
    set_jitter_frames,
    take_rtp_packets,
    tap_opus_packets,
)
from media.rtc.host_candidates import hark_gathering
from media.rtc.udp_mux import UdpMux
from tests.support import SPEECH, HarkProcess, eventually, publish, running_server

STALL_S = 6


async def test_the_audio_jitter_buffer_can_still_be_shortened() -> None:
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("audio", direction="recvonly").receiver
        assert set_jitter_frames(receiver, 1), (
            "aiortc moved its jitter buffer: the tests' WHEP listeners hear 60 ms later"
        )
    finally:
        await pc.close()


async def test_received_rtp_packets_can_still_be_tapped_by_test_listeners() -> None:
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("audio", direction="recvonly").receiver
        assert tap_opus_packets(receiver, 111, lambda payload, timestamp: None), (
            "aiortc renamed RTCRtpReceiver._handle_rtp_packet: tests cannot see a player's packets"
        )
    finally:
        await pc.close()


async def test_received_rtp_packets_can_be_taken_before_aiortc_decodes_them() -> None:
    """Hark decodes the publishers' audio itself: aiortc must hand it every packet, decode
    none of them on its own thread, and still count them in its receiver stats, also once the
    SRTP packets skip aioice's queue."""
    sender, receiver_pc = RTCPeerConnection(), RTCPeerConnection()
    player = MediaPlayer(str(SPEECH), decode=False)
    taken: list[RtpPacket] = []
    try:
        sender.addTransceiver(player.audio, direction="sendonly")
        await sender.setLocalDescription(await sender.createOffer())
        await receiver_pc.setRemoteDescription(sender.localDescription)
        receiver = receiver_pc.getTransceivers()[0].receiver
        assert take_rtp_packets(receiver, taken.append), (
            "aiortc moved its jitter buffer: Hark cannot hear publishers (it refuses to start)"
        )
        await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
        await sender.setRemoteDescription(receiver_pc.localDescription)
        await eventually(lambda: receiver_pc.connectionState == "connected", "connected")
        assert receive_rtp_directly(receiver_pc), (
            "aiortc or aioice receive SRTP another way: a queue and a task switch per packet"
        )
        await eventually(lambda: len(taken) >= 100, "100 RTP packets taken", timeout=30)
        report = (await receiver.getStats()).values()
        stats = [s for s in report if s.type == "inbound-rtp"]
        assert stats and stats[0].packetsReceived >= 100, "receiver stats still count packets"
        transport = [s for s in report if s.type == "transport"]
        assert transport and transport[0].packetsReceived >= 100, "and so do transport stats"
        assert receiver.track._queue.empty(), "aiortc's decoder thread decoded nothing"
        assert len({p.sequence_number for p in taken}) == len(taken)
    finally:
        player.audio.stop()
        await sender.close()
        await receiver_pc.close()


def test_a_sender_still_sends_packets_as_they_are() -> None:
    source = inspect.getsource(RTCRtpSender._next_encoded_frame)
    assert "self.__encoder.pack(data)" in source, (
        "aiortc no longer passes av.Packet through: every WHEP player would re-encode"
    )


def test_a_connection_still_starts_its_transceivers_through_send_and_receive() -> None:
    source = inspect.getsource(RTCPeerConnection._RTCPeerConnection__connect)  # type: ignore[attr-defined]
    assert "transceiver.sender.send(" in source and "transceiver.receiver.receive(" in source, (
        "aiortc starts transceivers another way: close_peer_connection no longer stops a close "
        "that races DTLS from leaving RTCP tasks running"
    )


@pytest.mark.parametrize("hook", compat.HOOKS, ids=lambda hook: hook.name)
async def test_every_hook_still_applies_to_the_installed_aiortc_and_aioice(hook: Hook) -> None:
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio", direction="recvonly")
        assert hook.applies(pc), hook.lost
    finally:
        await pc.close()


async def test_the_start_up_check_warns_of_nothing_with_the_pinned_versions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger=compat.__name__):
        assert await compat.check() == []
    assert not caplog.records


async def test_a_hook_that_cannot_apply_is_named_in_one_warning_at_start_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    moved = Hook("moved", "aiortc moved it: something has no effect", lambda pc: False)
    with caplog.at_level(logging.WARNING, logger=compat.__name__):
        assert await compat.check((*compat.HOOKS, moved)) == [moved]
    assert [r.getMessage() for r in caplog.records] == [moved.lost]


async def offered_host_addresses() -> set[str]:
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        lines = pc.localDescription.sdp.splitlines()
        return {line.split()[4] for line in lines if line.startswith("a=candidate:")}
    finally:
        await pc.close()


async def test_a_servers_choice_of_ice_addresses_ends_when_it_stops() -> None:
    before = await offered_host_addresses()
    async with running_server(ice_addresses=("127.0.0.2",)):
        assert await offered_host_addresses() == {"127.0.0.2"}
    assert await offered_host_addresses() == before == {"127.0.0.1"}


@pytest.fixture
def quick_consent() -> Iterator[None]:
    """Consent checks every 0.2 s that expire after 10 s, for this test; then Hark's defaults."""
    assert keep_consent_through_stalls(interval_s=0.2, expiry_s=10.0), (
        "aioice changed its consent checks: a busy event loop closes live sessions again"
    )
    yield
    keep_consent_through_stalls()


def test_aioice_still_starts_consent_checks_through_query_consent() -> None:
    source = inspect.getsource(aioice.ice.Connection.connect)
    assert "self.query_consent()" in source, (
        "aioice starts consent checks another way: keep_consent_through_stalls no longer applies"
    )


async def test_consent_survives_a_peer_that_stalls_for_seconds(quick_consent: None) -> None:
    async with HarkProcess("--ice-address", "127.0.0.1") as hark, aiohttp.ClientSession() as http:
        assert hark.proc is not None
        base = f"http://127.0.0.1:{hark.http_port}"
        publisher = await publish(base)
        try:
            await wait_for_frames(http, base, 50)
            stopped_at = await frames_decoded(http, base)
            hark.proc.send_signal(signal.SIGSTOP)  # its loop stalls: no answer for 6 s
            try:
                await asyncio.sleep(STALL_S)  # aioice alone gives up after 6 unanswered checks
            finally:
                hark.proc.send_signal(signal.SIGCONT)
            # What queued up during the stall, then new audio: the publisher kept sending.
            await wait_for_frames(http, base, stopped_at + 50 * STALL_S + 100)
            assert publisher.pc.connectionState == "connected"
        finally:
            await publisher.vanish()


async def frames_decoded(http: aiohttp.ClientSession, base: str) -> float:
    async with http.get(base + "/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "hark_audio_frames_decoded_total":
                return sample.value
    return 0.0


async def wait_for_frames(http: aiohttp.ClientSession, base: str, frames: float) -> None:
    async with asyncio.timeout(60):
        while await frames_decoded(http, base) < frames:
            await asyncio.sleep(0.1)


async def hark_offer_candidates() -> list[tuple[str, int]]:
    """Host candidates of an offer gathered as Hark gathers (inside ``hark_gathering``)."""
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio", direction="recvonly")
        with hark_gathering():
            await pc.setLocalDescription(await pc.createOffer())
        lines = pc.localDescription.sdp.splitlines()
        fields = [line.split() for line in lines if line.startswith("a=candidate:")]
        return [(f[4], int(f[5])) for f in fields if f[7] == "host"]
    finally:
        await pc.close()


async def test_host_candidates_can_still_announce_a_public_address() -> None:
    undo_hosts = compat.restrict_host_candidates(["127.0.0.2"])
    undo_plan = compat.install_ice_plan(None, ["203.0.113.7"])
    try:
        assert [host for host, _ in await hark_offer_candidates()] == ["203.0.113.7"], (
            "aioice gathers host candidates another way: --ice-public-address has no effect"
        )
    finally:
        undo_plan()
        undo_hosts()
    assert [host for host, _ in await hark_offer_candidates()] == ["127.0.0.1"]


async def test_host_candidates_can_still_share_one_socket_and_leave_no_entry() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    mux = UdpMux(port, ["127.0.0.1"])
    await mux.open()
    undo_hosts = compat.restrict_host_candidates(["127.0.0.1"])
    undo_plan = compat.install_ice_plan(mux, [])
    try:
        assert await hark_offer_candidates() == [("127.0.0.1", port)], (
            "aioice's host sockets are not where Hark expects: --udp-port cannot share one socket"
        )
        assert mux.entries() == 0, "a closed connection left its entries in the demultiplexer"
    finally:
        undo_plan()
        undo_hosts()
        mux.close()
