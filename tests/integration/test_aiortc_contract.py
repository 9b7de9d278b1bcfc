"""What Hark relies on in aiortc beyond its public API; fails loudly when an upgrade changes it."""

from __future__ import annotations

from aiortc import RTCPeerConnection

from media.peer import set_jitter_frames


async def test_the_audio_jitter_buffer_can_still_be_shortened() -> None:
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("audio", direction="recvonly").receiver
        assert set_jitter_frames(receiver, 1), (
            "aiortc moved its jitter buffer: onset latency +60 ms"
        )
    finally:
        await pc.close()
