"""A WHIP publisher built on GStreamer's webrtcbin, for Debian's own Python with python3-gi.

    WHIP_TOKEN=... /usr/bin/python3 gst_whip.py URL SPEECH.ogg [--max-bundle]

Plays the Ogg/Opus file in real time through opusenc and rtpopuspay into webrtcbin, POSTs
webrtcbin's own offer (once its candidates are gathered) to URL and applies the answer. With
``--max-bundle`` a video m-line comes first and the bundle policy is max-bundle, so the audio is
offered as ``m=audio 0 ... a=bundle-only``. Prints ``LOCATION <path>`` once answered, then
``STATE <ice connection state>`` lines; exits 0 at the end of the file, 1 on any error.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

AUDIO = (
    "filesrc location={path} ! oggdemux ! opusdec ! audioconvert ! audioresample "
    "! identity sync=true ! opusenc ! rtpopuspay pt=111 "
    "! application/x-rtp,media=audio,encoding-name=OPUS,clock-rate=48000,payload=111 ! webrtc."
)
VIDEO = (
    "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=10/1 "
    "! vp8enc deadline=1 ! rtpvp8pay pt=96 "
    "! application/x-rtp,media=video,encoding-name=VP8,clock-rate=90000,payload=96 ! webrtc."
)


def say(line: str) -> None:
    print(line, flush=True)


class Publisher:
    def __init__(self, url: str, path: str, max_bundle: bool, token: str | None) -> None:
        # Without --max-bundle, webrtcbin keeps its default bundle policy ("none").
        described = "webrtcbin name=webrtc " + (
            "bundle-policy=max-bundle " + VIDEO + " " if max_bundle else ""
        )
        self.pipeline = Gst.parse_launch(described + AUDIO.format(path=path))
        self.webrtc = self.pipeline.get_by_name("webrtc")
        self.url = url
        self.token = token
        self.loop = GLib.MainLoop()
        self.status = 1
        self.posted = False
        self.webrtc.connect("on-negotiation-needed", self.on_negotiation_needed)
        self.webrtc.connect("notify::ice-gathering-state", self.on_gathering)
        self.webrtc.connect("notify::ice-connection-state", self.on_ice_state)
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message", self.on_message)

    def run(self) -> int:
        self.pipeline.set_state(Gst.State.PLAYING)
        self.loop.run()
        self.pipeline.set_state(Gst.State.NULL)
        return self.status

    def fail(self, why: str) -> None:
        print(f"gst_whip: {why}", file=sys.stderr, flush=True)
        self.status = 1
        self.loop.quit()

    def on_negotiation_needed(self, element: Gst.Element) -> None:
        promise = Gst.Promise.new_with_change_func(self.on_offer, None)
        element.emit("create-offer", None, promise)

    def on_offer(self, promise: Gst.Promise, _: object) -> None:
        # The offer lives in the reply: keep the reply referenced while the offer is used.
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        self.webrtc.emit("set-local-description", offer, Gst.Promise.new())
        del reply

    def on_gathering(self, element: Gst.Element, _: object) -> None:
        complete = GstWebRTC.WebRTCICEGatheringState.COMPLETE
        if element.get_property("ice-gathering-state") == complete and not self.posted:
            self.posted = True
            GLib.idle_add(self.post_offer)

    def post_offer(self) -> bool:
        offer = self.webrtc.get_property("local-description").sdp.as_text()
        if os.environ.get("GST_WHIP_DEBUG"):
            print(offer, file=sys.stderr, flush=True)
        headers = {"Content-Type": "application/sdp"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url, offer.encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                answer, location = reply.read().decode(), reply.headers["Location"]
        except urllib.error.HTTPError as error:
            self.fail(f"WHIP POST answered {error.code}: {error.read().decode()}")
            return False
        result, message = GstSdp.SDPMessage.new_from_text(answer)
        if result != GstSdp.SDPResult.OK:
            self.fail("the answer is not SDP")
            return False
        say(f"LOCATION {location}")
        description = GstWebRTC.WebRTCSessionDescription.new(
            GstWebRTC.WebRTCSDPType.ANSWER, message
        )
        self.webrtc.emit("set-remote-description", description, Gst.Promise.new())
        if os.environ.get("GST_WHIP_DEBUG"):
            print(answer, file=sys.stderr, flush=True)
        return False

    def on_ice_state(self, element: Gst.Element, _: object) -> None:
        state = element.get_property("ice-connection-state")
        say(f"STATE {state.value_nick}")

    def on_message(self, _: Gst.Bus, message: Gst.Message) -> None:
        if message.type == Gst.MessageType.EOS:
            self.status = 0
            self.loop.quit()
        elif message.type == Gst.MessageType.ERROR:
            error, debug = message.parse_error()
            self.fail(f"{error.message} ({debug})")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("path")
    parser.add_argument("--max-bundle", action="store_true")
    args = parser.parse_args()
    Gst.init(None)
    return Publisher(args.url, args.path, args.max_bundle, os.environ.get("WHIP_TOKEN")).run()


if __name__ == "__main__":
    sys.exit(main())
