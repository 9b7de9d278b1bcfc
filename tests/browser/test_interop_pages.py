"""Real browsers without microphone permission against a real server: mDNS-only offers.

A page with no ``getUserMedia`` gets no media permission, so Firefox and Chromium hide their host
candidates behind mDNS names. The pages are plain JavaScript written here (no SDK), served from
another origin than Hark's, and report to the test over HTTP.
"""

from __future__ import annotations

import asyncio
import pathlib
import re

import grpc
import pytest

from media.v1 import media_pb2 as pb
from tests.browser.harness import ReportingSite, open_browser
from tests.interop.network import lan_addresses
from tests.listening import play_requests, requests_of, tone
from tests.support import grpc_stub, running_server, truth

pytestmark = pytest.mark.browser

COMMON_JS = """
const query = new URLSearchParams(location.search);
const hark = query.get("hark"), session = query.get("session"), token = query.get("token");
function report(kind, data = {}) {
  return fetch("/report", {method: "POST", headers: {"Content-Type": "application/json"},
                           body: JSON.stringify({kind, ...data})});
}
function gathered(pc) {
  return new Promise(resolve => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") resolve();
    });
  });
}
async function negotiate(pc, path) {
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const offer = pc.localDescription.sdp;
  const reply = await fetch(hark + path, {
    method: "POST", body: offer,
    headers: {"Content-Type": "application/sdp", "Authorization": "Bearer " + token}});
  const answer = await reply.text();
  if (reply.status !== 201) throw new Error(`POST ${path} answered ${reply.status}: ${answer}`);
  await report("offered", {offer});
  pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "connected") report("connected");
    if (pc.connectionState === "failed") report("error", {message: "connection failed"});
  });
  await pc.setRemoteDescription({type: "answer", sdp: answer});
}
"""

# Listen-only WHEP player: no getUserMedia. Reports "heard" once what it receives is loud, by the
# receiver's own level (getStats inbound-rtp audioLevel) or a WebAudio analyser on the track.
LISTEN_PAGE = (
    "<!doctype html><meta charset=utf-8><title>listen</title><script>"
    + COMMON_JS
    + """
async function main() {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("audio", {direction: "recvonly"});
  const context = new AudioContext();
  const analyser = context.createAnalyser();
  pc.addEventListener("track", event => {
    const stream = new MediaStream([event.track]);
    const element = new Audio();  // Chromium feeds WebAudio only from a playing remote stream
    element.srcObject = stream;
    element.muted = true;
    element.play().catch(() => {});
    context.createMediaStreamSource(stream).connect(analyser);
    context.resume();
  });
  await negotiate(pc, "/whep/" + session);
  const samples = new Float32Array(analyser.fftSize);
  let reported = false;
  setInterval(async () => {
    let level = 0;
    (await pc.getStats()).forEach(s => {
      if (s.type === "inbound-rtp" && s.kind === "audio" && s.audioLevel) level = s.audioLevel;
    });
    analyser.getFloatTimeDomainData(samples);
    const peak = samples.reduce((a, b) => Math.max(a, Math.abs(b)), 0);
    if (!reported && Math.max(level, peak) > 0.1) {
      reported = true;
      report("heard", {audioLevel: level, peak});
    }
  }, 50);
}
main().catch(error => report("error", {message: String(error)}));
</script>"""
)

# WHIP publisher with no microphone: the speech fixture, played by a media element, is the track.
# (Not WebAudio: with no sound device, as on a headless test machine, Firefox never starts an
# AudioContext, so a MediaStreamAudioDestinationNode stays silent; a media element still plays.)
PUBLISH_PAGE = (
    "<!doctype html><meta charset=utf-8><title>publish</title><script>"
    + COMMON_JS
    + """
async function main() {
  const speech = new Audio("/fixtures/speech.ogg");
  speech.muted = true;  // captured, not heard
  const stream = speech.mozCaptureStream ? speech.mozCaptureStream() : speech.captureStream();
  await new Promise(resolve => speech.addEventListener("canplaythrough", resolve, {once: true}));
  const pc = new RTCPeerConnection();
  const track = await new Promise(resolve => {
    const tracks = stream.getAudioTracks();
    if (tracks.length) return resolve(tracks[0]);
    stream.addEventListener("addtrack", event => resolve(event.track), {once: true});
    speech.play();
  });
  pc.addTransceiver(track, {direction: "sendonly"});
  pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "connected") { speech.currentTime = 0; speech.play(); }
  });
  await negotiate(pc, "/whip/" + session);
}
main().catch(error => report("error", {message: String(error)}));
</script>"""
)


HOST_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ host", re.MULTILINE)


def assert_mdns_only(offer: str) -> None:
    """The scenario under test: the browser hid every host candidate behind an mDNS name."""
    hosts = HOST_CANDIDATE.findall(offer)
    assert hosts and all(h.endswith(".local") for h in hosts), hosts


@pytest.mark.parametrize("browser", ["firefox", "chromium"])
async def test_a_listen_only_player_page_without_microphone_hears_a_played_tone(
    browser: str, tmp_path: pathlib.Path
) -> None:
    ice = ("127.0.0.1", *lan_addresses())
    async with running_server(ice_addresses=ice) as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        async with ReportingSite({"listen": LISTEN_PAGE}) as site:
            url = site.url("listen", hark=app.base_url, session=session.id, token=session.token)
            async with open_browser(browser, url, tmp_path):
                assert_mdns_only((await site.report("offered", 60))["offer"])
                await site.report("connected", 30)
                assert site.reported("heard") == []  # nothing loud before the agent speaks
                playing = asyncio.ensure_future(
                    stub.PlayAudio(
                        requests_of(play_requests(session.id, tone(440, 3.0, 24000), rate=24000)),
                        timeout=20,
                    )
                )
                try:
                    heard = await site.report("heard", 20)
                finally:
                    playing.cancel()
    print(f"\n{browser} heard the tone: {heard}")


async def first_speech(watch: grpc.aio.UnaryStreamCall) -> pb.SpeechStarted:  # type: ignore[type-arg]
    async for event in watch:
        if event.WhichOneof("payload") == "speech_started":
            return event.speech_started
        if event.WhichOneof("payload") == "state_changed" and event.state_changed.close_detail:
            raise AssertionError(f"session closed: {event.state_changed.close_detail}")
    raise AssertionError("the watch ended before any speech")


async def test_a_firefox_page_without_microphone_publishes_speech_that_the_vad_hears(
    tmp_path: pathlib.Path,
) -> None:
    ice = ("127.0.0.1", *lan_addresses())
    async with running_server(ice_addresses=ice) as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        watch = stub.WatchSession(pb.WatchSessionRequest(session_id=session.id))
        async with ReportingSite({"publish": PUBLISH_PAGE}) as site:
            url = site.url("publish", hark=app.base_url, session=session.id, token=session.token)
            async with open_browser("firefox", url, tmp_path):
                assert_mdns_only((await site.report("offered", 60))["offer"])
                ready = await stub.StartListening(
                    pb.StartListeningRequest(session_id=session.id, wait_for_ready=True),
                    timeout=30,
                )
                assert ready.state == pb.SessionState.READY
                started = await asyncio.wait_for(first_speech(watch), 30)
                first = truth()["utterances"][0]["start_ms"]
                assert abs(started.start_ms - first) <= 200, (started.start_ms, first)
        watch.cancel()
