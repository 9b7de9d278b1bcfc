"""What Hark relies on in aiortc beyond its public API; fails loudly when an upgrade changes it."""

from __future__ import annotations

import inspect

from aiortc import RTCPeerConnection, RTCRtpSender

from media.rtc.compat import set_jitter_frames, tap_opus_packets


async def test_the_audio_jitter_buffer_can_still_be_shortened() -> None:
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("audio", direction="recvonly").receiver
        assert set_jitter_frames(receiver, 1), (
            "aiortc moved its jitter buffer: onset latency +60 ms"
        )
    finally:
        await pc.close()


async def test_received_rtp_packets_can_still_be_tapped_for_forwarding() -> None:
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("audio", direction="recvonly").receiver
        assert tap_opus_packets(receiver, 111, lambda payload, timestamp: None), (
            "aiortc renamed RTCRtpReceiver._handle_rtp_packet: source=publisher players go silent"
        )
    finally:
        await pc.close()


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
