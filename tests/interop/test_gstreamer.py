"""GStreamer's webrtcbin publishing over WHIP to a real server, heard by the VAD.

webrtcbin runs in Debian's own Python (python3-gi) in a subprocess: tests/interop/gst_whip.py.
Its default offer is ``a=setup:actpass`` with an RSA certificate; with max-bundle the audio comes
as ``m=audio 0 ... a=bundle-only`` after a video m-line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from media.v1 import media_pb2 as pb
from tests.interop.network import lan_addresses
from tests.support import SPEECH, grpc_stub, running_server, truth

SYSTEM_PYTHON = "/usr/bin/python3"
SCRIPT = pathlib.Path(__file__).with_name("gst_whip.py")
GST_CHECK = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0'); "
    "from gi.repository import Gst; Gst.init(None); "
    "assert all(Gst.ElementFactory.find(e) for e in ('webrtcbin', 'nicesrc', 'opusenc', "
    "'opusdec', 'rtpopuspay', 'oggdemux', 'vp8enc', 'rtpvp8pay')); "
    "print(Gst.version_string())"
)


def gstreamer_version() -> str:
    """GStreamer's version; a skip (a failure under CI) naming the Debian packages when missing."""
    found = None
    if os.path.exists(SYSTEM_PYTHON):
        check = subprocess.run(
            [SYSTEM_PYTHON, "-c", GST_CHECK], capture_output=True, text=True, timeout=60
        )
        found = check.stdout.strip() if check.returncode == 0 else None
    if found:
        return found
    reason = (
        "GStreamer's webrtcbin for Debian's python3 is missing (python3-gi, "
        "gir1.2-gst-plugins-base-1.0, gir1.2-gst-plugins-bad-1.0, gstreamer1.0-plugins-base, "
        "gstreamer1.0-plugins-good, gstreamer1.0-plugins-bad, gstreamer1.0-nice)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must run the interop tests", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def gstreamer() -> str:
    return gstreamer_version()


@contextlib.asynccontextmanager
async def webrtcbin_publisher(
    url: str, token: str, *extra: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON,
        str(SCRIPT),
        url,
        str(SPEECH),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=sys.stderr,
        env={**os.environ, "WHIP_TOKEN": token},
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def first_speech(watch: object) -> pb.SpeechStarted:
    async for event in watch:  # type: ignore[attr-defined]
        if event.WhichOneof("payload") == "speech_started":
            return event.speech_started
        if event.WhichOneof("payload") == "state_changed" and event.state_changed.state == (
            pb.SessionState.CLOSED
        ):
            raise AssertionError(f"session closed: {event.state_changed.close_detail}")
    raise AssertionError("watch ended")


@pytest.mark.parametrize("extra", [(), ("--max-bundle",)], ids=["default offer", "max-bundle"])
async def test_webrtcbin_publishes_over_whip_reaches_ready_and_is_heard(
    gstreamer: str, extra: tuple[str, ...]
) -> None:
    print(f"\n{gstreamer}")
    async with running_server(ice_addresses=lan_addresses()) as app, grpc_stub(app) as stub:
        created = await stub.CreateSession(pb.CreateSessionRequest())
        watch = stub.WatchSession(pb.WatchSessionRequest(session_id=created.id))
        url = f"{app.base_url}/whip/{created.id}"
        async with webrtcbin_publisher(url, created.token, *extra) as proc:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line.startswith("LOCATION /whip/"), line
            session = await stub.StartListening(
                pb.StartListeningRequest(session_id=created.id, wait_for_ready=True), timeout=30
            )
            assert session.state == pb.SessionState.READY
            started = await asyncio.wait_for(first_speech(watch), 30)
            first = truth()["utterances"][0]["start_ms"]
            assert abs(started.start_ms - first) <= 200, (started.start_ms, first)
        watch.cancel()
