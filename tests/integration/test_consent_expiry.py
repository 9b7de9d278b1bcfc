"""A publisher whose peer stops answering ICE consent checks closes as soon as consent expires,
saying so, instead of waiting for --media-timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from media.rtc.compat import keep_consent_through_stalls
from media.v1 import media_pb2 as pb
from tests.support import grpc_stub, publish, running_server


@pytest.fixture
def short_consent() -> Iterator[None]:
    """Consent checks every 0.2 s that expire after 1 s, for this test; then Hark's defaults."""
    yield
    keep_consent_through_stalls()


async def test_a_peer_that_stops_answering_consent_checks_closes_its_session_saying_so(
    short_consent: None,
) -> None:
    async with running_server(media_timeout=120.0) as app, grpc_stub(app) as stub:
        assert keep_consent_through_stalls(interval_s=0.2, expiry_s=1.0)
        publisher = await publish(app.base_url)
        await app.sessions.wait_ready(publisher.session_id)
        request = pb.GetSessionRequest(session_id=publisher.session_id)
        # The publisher's ICE goes away without a DTLS close: nothing answers Hark's checks.
        await publisher.pc.getTransceivers()[0].sender.transport.transport.stop()
        async with asyncio.timeout(60):
            while (session := await stub.GetSession(request)).state != pb.CLOSED:
                await asyncio.sleep(0.1)
        assert pb.CloseReason.Name(session.close_reason) == "ICE_FAILED", session.close_detail
        assert "ICE consent expired" in session.close_detail
        await publisher.vanish()
