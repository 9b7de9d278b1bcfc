"""A real browser end to end: headless Chromium publishes a fake microphone through the demo page.

Chromium plays the speech fixture as its microphone; the test drives the page, watches the session
over gRPC like a backend would, and checks the page shows what the server sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pathlib
import shutil
import wave
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest

from media.v1 import media_pb2 as pb
from media.v1 import media_pb2_grpc
from scripts.make_fixtures import decode
from tests.listening import play_requests, requests_of, tone
from tests.support import SPEECH, HarkProcess, next_event, truth

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OUTPUT = pathlib.Path(__file__).resolve().parents[2] / "test-output"

pytestmark = pytest.mark.browser
if not os.path.exists(CHROMIUM):
    reason = "Debian's chromium is not installed (make deps-debian installs it)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must run the browser tests", pytrace=False)
    pytest.skip(reason, allow_module_level=True)
playwright = pytest.importorskip("playwright.async_api", reason="playwright is not installed")


def speech_wav(folder: pathlib.Path, lead_in_s: float = 0.0) -> pathlib.Path:
    """The speech fixture, after ``lead_in_s`` of silence, as the 48 kHz mono WAV Chromium's fake
    microphone plays."""
    path = folder / "speech.wav"
    samples = decode(SPEECH)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48000)
        out.writeframes(bytes(2 * round(48000 * lead_in_s)) + samples.tobytes())
    return path


def chromium_args(wav: pathlib.Path) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop",
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
    ]


@dataclasses.dataclass
class DemoPage:
    """Hark in its own process and the demo page open on it in headless Chromium."""

    base: str
    stub: media_pb2_grpc.MediaServiceStub
    page: Any
    failed_gets: list[str]


@contextlib.asynccontextmanager
async def demo_page(tmp_path: pathlib.Path, lead_in_s: float = 0.0) -> AsyncIterator[DemoPage]:
    async with HarkProcess("--ice-address", "127.0.0.1") as hark:
        base = f"http://127.0.0.1:{hark.http_port}"
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{hark.grpc_port}") as channel,
            playwright.async_playwright() as driver,
        ):
            browser = await driver.chromium.launch(
                executable_path=CHROMIUM, args=chromium_args(speech_wav(tmp_path, lead_in_s))
            )
            try:
                page = await browser.new_page()
                failed_gets: list[str] = []
                page.on(
                    "response",
                    lambda r: (
                        failed_gets.append(f"{r.status} {r.url}")
                        if r.request.method == "GET" and r.status >= 400
                        else None
                    ),
                )
                await page.goto(base + "/")
                yield DemoPage(base, media_pb2_grpc.MediaServiceStub(channel), page, failed_gets)
            finally:
                await browser.close()


async def start_and_listen(demo: DemoPage) -> tuple[str, Any]:
    """Press Start on the page; as a backend: find its session, watch it, listen once READY."""
    everyone = demo.stub.WatchSessions(pb.WatchSessionsRequest())
    await demo.page.click("#start")
    session_id = (await next_event(everyone, timeout=15)).session_id
    everyone.cancel()
    watch = demo.stub.WatchSession(pb.WatchSessionRequest(session_id=session_id))
    await demo.stub.StartListening(
        pb.StartListeningRequest(session_id=session_id, wait_for_ready=True), timeout=15
    )
    return session_id, watch


async def test_the_page_publishes_is_heard_and_hangs_up(tmp_path: pathlib.Path) -> None:
    utterances = truth()["utterances"]
    async with demo_page(tmp_path) as demo:
        page = demo.page
        session_id, watch = await start_and_listen(demo)
        await page.wait_for_function("document.body.dataset.state === 'READY'")
        assert await page.text_content("#status") == "Connected"
        assert await page.text_content("#session-id") == session_id
        # listening (started by the backend) shows, and only the button that undoes it is enabled
        await page.wait_for_function("document.getElementById('listening').textContent === 'on'")
        assert await page.is_disabled("#listen") and await page.is_enabled("#unlisten")
        assert await page.is_disabled("#start") and await page.is_enabled("#hangup")

        started, ended = 0, 0
        loop = asyncio.get_running_loop()
        until = loop.time() + truth()["duration_ms"] / 1000 + 2
        while loop.time() < until and ended < len(utterances):
            try:
                event = await next_event(watch, timeout=until - loop.time())
            except TimeoutError:
                break
            started += event.HasField("speech_started")
            ended += event.HasField("speech_ended")
        await page.wait_for_function("document.body.dataset.spoke === 'yes'")
        OUTPUT.mkdir(exist_ok=True)
        await page.screenshot(path=str(OUTPUT / "demo-page.png"), full_page=True)

        await page.close(run_before_unload=True)
        closed = await next_closed(watch)
        assert demo.failed_gets == [], "the page asked for something that is not there (favicon?)"

    assert abs(started - len(utterances)) <= 1, f"{started} SpeechStarted for {len(utterances)}"
    assert abs(ended - len(utterances)) <= 1, f"{ended} SpeechEnded for {len(utterances)}"
    reason = pb.CloseReason.Name(closed.state_changed.close_reason)
    print(f"\nclosing the page ended the session with {reason}")
    assert reason in ("CLIENT_DELETE", "MEDIA_TIMEOUT")


async def next_closed(watch: grpc.aio.UnaryStreamCall) -> pb.SessionEvent:  # type: ignore[type-arg]
    while True:
        event = await next_event(watch, timeout=15)
        if event.HasField("state_changed") and event.state_changed.state == pb.CLOSED:
            return event


async def test_a_wrong_token_shows_a_clear_error_and_creates_no_session(
    tmp_path: pathlib.Path,
) -> None:
    token = "the-right-token-123"
    async with HarkProcess("--token", token, "--ice-address", "127.0.0.1") as hark:
        base = f"http://127.0.0.1:{hark.http_port}"
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{hark.grpc_port}") as channel,
            playwright.async_playwright() as driver,
        ):
            browser = await driver.chromium.launch(
                executable_path=CHROMIUM, args=chromium_args(speech_wav(tmp_path))
            )
            try:
                page = await browser.new_page()
                await page.goto(base + "/")
                await page.fill("#token", "not-the-token")
                await page.click("#start")
                await page.wait_for_selector("#error:not([hidden])")
                error = await page.text_content("#error") or ""
            finally:
                await browser.close()
            stub = media_pb2_grpc.MediaServiceStub(channel)
            listed = await stub.ListSessions(
                pb.ListSessionsRequest(include_closed=True),
                metadata=(("authorization", f"Bearer {token}"),),
            )
    assert "401" in error and "wrong bearer token" in error
    assert list(listed.sessions) == []


async def test_the_page_plays_the_agent_and_talking_over_it_cuts_the_agent_off(
    tmp_path: pathlib.Path,
) -> None:
    """The page's WHEP player hears PlayAudio; the user's first words cut the agent off."""
    lead_in_s = 4.0  # of microphone silence, so the agent is heard before the user speaks
    async with demo_page(tmp_path, lead_in_s) as demo:
        page, stub = demo.page, demo.stub
        session_id, watch = await start_and_listen(demo)
        # the page's player is receiving (Hark's silence between playbacks) and quiet
        await page.wait_for_function("document.body.dataset.agentLevel !== undefined")
        assert float(await agent_level(page)) < 0.01

        talking = asyncio.ensure_future(
            stub.PlayAudio(requests_of(play_requests(session_id, tone(440, 20.0))))
        )
        await page.wait_for_function("Number(document.body.dataset.agentLevel) > 0.1")
        heard_level = await agent_level(page)
        assert await page.text_content("#agent") == "speaking"

        events = []
        while not events or not events[-1].HasField("playback_interrupted"):
            events.append(await next_event(watch, timeout=15))
        reply = await asyncio.wait_for(talking, 5)
        await page.wait_for_function("document.body.dataset.agentCut === 'USER_SPEECH'")
        await page.wait_for_function("Number(document.body.dataset.agentLevel) < 0.01")
        assert await page.text_content("#agent") == "cut off (USER_SPEECH)"
        OUTPUT.mkdir(exist_ok=True)
        await page.screenshot(path=str(OUTPUT / "demo-page-agent.png"), full_page=True)

        await page.click("#hangup")
        closed = await next_closed(watch)
        await page.wait_for_function("document.body.dataset.state === 'CLOSED'")
        assert await page.text_content("#listening") == "off"
        assert await page.is_disabled("#listen") and await page.is_disabled("#unlisten")
        assert await page.is_enabled("#start") and await page.is_disabled("#hangup")
        async with aiohttp.ClientSession() as http:
            async with http.get(demo.base + "/metrics") as response:
                metrics = await response.text()

    kinds = [e.WhichOneof("payload") for e in events]
    print(f"\nthe page heard the agent at level {heard_level}; events: {kinds}")
    # the user's speech cut the agent: the interruption follows a SpeechStarted during playback
    # (the first utterance or, on a slow machine, one after it)
    assert kinds[-2:] == ["speech_started", "playback_interrupted"], kinds
    assert "playback_started" in kinds[:-2]
    assert events[-1].playback_interrupted.reason == pb.USER_SPEECH
    assert reply.interrupted and reply.interrupt_reason == pb.USER_SPEECH
    assert 0 < reply.played_ms < 20000
    assert closed.state_changed.close_reason == pb.CLIENT_DELETE
    assert 'hark_whep_players{source="agent"} 0.0' in metrics
    assert 'hark_whep_players_closed_total{reason="DELETE"} 1.0' in metrics


async def agent_level(page: playwright.Page) -> str:
    return await page.evaluate("document.body.dataset.agentLevel")
