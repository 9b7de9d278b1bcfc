"""Headless Firefox and Chromium through one ``--udp-port``: the pages of test_interop_pages (no
microphone, mDNS-only offers, so the pair forms from the browser's checks to the shared port)."""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from media.v1 import media_pb2 as pb
from tests.browser.harness import ReportingSite, open_browser
from tests.browser.test_interop_pages import LISTEN_PAGE, PUBLISH_PAGE, first_speech
from tests.integration.test_udp_mux import free_udp_port
from tests.interop.network import lan_addresses
from tests.listening import play_requests, requests_of, tone
from tests.support import grpc_stub, running_server

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("browser", ["firefox", "chromium"])
async def test_a_browser_player_hears_a_played_tone_through_the_shared_port(
    browser: str, tmp_path: pathlib.Path
) -> None:
    port = free_udp_port()
    ice = ("127.0.0.1", *lan_addresses())
    async with (
        running_server(udp_port=port, ice_addresses=ice) as app,
        grpc_stub(app) as stub,
    ):
        mux = app.ice_plan.mux
        assert mux is not None and mux.sockets() == 1
        session = await stub.CreateSession(pb.CreateSessionRequest())
        async with ReportingSite({"listen": LISTEN_PAGE}) as site:
            url = site.url("listen", hark=app.base_url, session=session.id, token=session.token)
            async with open_browser(browser, url, tmp_path):
                await site.report("connected", 30)
                playing = asyncio.ensure_future(
                    stub.PlayAudio(
                        requests_of(play_requests(session.id, tone(440, 3.0, 24000), rate=24000)),
                        timeout=20,
                    )
                )
                try:
                    await site.report("heard", 20)
                finally:
                    playing.cancel()
                assert mux.entries() > 0  # the player's connection is one of the mux's


async def test_firefox_publishes_speech_the_vad_hears_through_the_shared_port(
    tmp_path: pathlib.Path,
) -> None:
    port = free_udp_port()
    ice = ("127.0.0.1", *lan_addresses())
    async with (
        running_server(udp_port=port, ice_addresses=ice) as app,
        grpc_stub(app) as stub,
    ):
        session = await stub.CreateSession(pb.CreateSessionRequest())
        watch = stub.WatchSession(pb.WatchSessionRequest(session_id=session.id))
        async with ReportingSite({"publish": PUBLISH_PAGE}) as site:
            url = site.url("publish", hark=app.base_url, session=session.id, token=session.token)
            async with open_browser("firefox", url, tmp_path):
                ready = await stub.StartListening(
                    pb.StartListeningRequest(session_id=session.id, wait_for_ready=True),
                    timeout=30,
                )
                assert ready.state == pb.SessionState.READY
                started = await asyncio.wait_for(first_speech(watch), 30)
                assert started.start_ms > 0
        watch.cancel()
