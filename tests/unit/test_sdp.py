"""SDP offer checks and trickle-ICE fragments: real offers in, facts or precise errors out."""

from __future__ import annotations

import pytest
from aiortc import RTCPeerConnection
from aiortc.sdp import candidate_from_sdp
from hypothesis import given, settings
from hypothesis import strategies as st

from media.core.sdp import Direction, check_offer, stack_offer
from media.core.trickle import TrickleCandidate, is_ice_restart, parse_trickle_fragment
from media.errors import HarkError, InvalidOffer, InvalidTrickle, OfferTooLarge, UnsupportedOffer

FINGERPRINT = (
    "sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:"
    "DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08"
)

# What Chrome sends to a WHIP endpoint for a microphone: one audio m-line, sendonly.
CHROME_OFFER_LINES = [
    "v=0",
    "o=- 3470473375913452096 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0",
    "a=extmap-allow-mixed",
    "a=msid-semantic: WMS 5d2a7a3e-0b8c-4a51-9b0e-1f7f0f6c1a2b",
    "m=audio 54611 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
    "c=IN IP4 192.0.2.10",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=candidate:2881337548 1 udp 2122260223 192.0.2.10 54611 typ host generation 0 "
    "network-id 1 network-cost 10",
    "a=candidate:3796587612 1 udp 1686052607 198.51.100.23 54611 typ srflx raddr 192.0.2.10 "
    "rport 54611 generation 0 network-id 1 network-cost 10",
    "a=candidate:4165040788 1 tcp 1518280447 192.0.2.10 9 typ host tcptype active generation 0 "
    "network-id 1 network-cost 10",
    "a=ice-ufrag:Qx7j",
    "a=ice-pwd:0nCJGm0r8d5ZQ0m8vHYf4Ywa",
    "a=ice-options:trickle",
    "a=fingerprint:" + FINGERPRINT,
    "a=setup:actpass",
    "a=mid:0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=sendonly",
    "a=msid:5d2a7a3e-0b8c-4a51-9b0e-1f7f0f6c1a2b 0b7d61c4-5b8f-4f1e-8d0b-3c2f5a9e7d11",
    "a=rtcp-mux",
    "a=rtcp-rsize",
    "a=rtpmap:111 opus/48000/2",
    "a=rtcp-fb:111 transport-cc",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:63 red/48000/2",
    "a=fmtp:63 111/111",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:13 CN/8000",
    "a=rtpmap:110 telephone-event/48000",
    "a=rtpmap:126 telephone-event/8000",
    "a=ssrc:1129446914 cname:Tq8PbvV1kcRZ6vOV",
    "a=ssrc:1129446914 msid:5d2a7a3e-0b8c-4a51-9b0e-1f7f0f6c1a2b "
    "0b7d61c4-5b8f-4f1e-8d0b-3c2f5a9e7d11",
]
CHROME_OFFER = "\r\n".join(CHROME_OFFER_LINES) + "\r\n"
VIDEO = "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=rtpmap:96 VP8/90000\r\n"


def edit(old: str, new: str, text: str = CHROME_OFFER) -> str:
    assert old in text, old
    return text.replace(old, new)


def test_a_chrome_whip_offer_is_accepted_and_summarised() -> None:
    summary = check_offer(CHROME_OFFER, direction="publish")
    assert summary.opus_payload_type == 111
    assert (summary.ice_ufrag, summary.ice_pwd) == ("Qx7j", "0nCJGm0r8d5ZQ0m8vHYf4Ywa")
    assert summary.audio_direction == "sendonly"
    assert summary.audio_mid == "0"
    assert summary.audio_mline_index == 0
    assert summary.media_count == 1
    assert not summary.has_video


def test_lf_endings_trailing_whitespace_and_blank_lines_are_tolerated() -> None:
    sloppy = "\n".join(line + " \t" for line in CHROME_OFFER_LINES) + "\n\n  \n"
    assert check_offer(sloppy, direction="publish") == check_offer(
        CHROME_OFFER, direction="publish"
    )


def test_opus_is_found_in_any_case_and_position() -> None:
    offer = edit("111 63 9 0 8", "0 8 109").replace("opus/48000/2", "OPUS/48000/2")
    offer = edit("a=rtpmap:111 ", "a=rtpmap:109 ", offer)
    assert check_offer(offer, direction="publish").opus_payload_type == 109


def test_session_level_ice_dtls_and_direction_apply_to_the_audio() -> None:
    moved = ["a=ice-ufrag:Qx7j", "a=ice-pwd:0nCJGm0r8d5ZQ0m8vHYf4Ywa", "a=sendonly"]
    moved += ["a=fingerprint:" + FINGERPRINT, "a=setup:actpass"]
    offer = CHROME_OFFER
    for line in moved:
        offer = edit(line + "\r\n", "", offer)
    offer = edit("t=0 0\r\n", "t=0 0\r\n" + "".join(line + "\r\n" for line in moved), offer)
    summary = check_offer(offer, direction="publish")
    assert (summary.ice_ufrag, summary.audio_direction) == ("Qx7j", "sendonly")


def test_without_a_direction_attribute_the_audio_is_sendrecv_which_publishes_but_cannot_play() -> (
    None
):
    offer = edit("a=sendonly\r\n", "")
    assert check_offer(offer, direction="publish").audio_direction == "sendrecv"
    with pytest.raises(UnsupportedOffer, match="is sendrecv; to play it must be recvonly"):
        check_offer(offer, direction="play")


def test_a_whep_player_offer_is_recvonly() -> None:
    offer = edit("a=sendonly", "a=recvonly")
    assert check_offer(offer, direction="play").audio_direction == "recvonly"


def test_the_first_enabled_audio_m_line_is_the_one_checked() -> None:
    disabled = "m=audio 0 UDP/TLS/RTP/SAVPF 0\r\na=mid:x\r\na=rtpmap:0 PCMU/8000\r\n"
    offer = edit("m=audio 54611", disabled + "m=audio 54611") + VIDEO
    summary = check_offer(offer, direction="publish")
    assert (summary.audio_mline_index, summary.audio_mid, summary.media_count) == (1, "0", 3)
    assert summary.has_video


async def aiortc_offer(**transceivers: str) -> str:
    pc = RTCPeerConnection()
    try:
        for kind, direction in transceivers.items():
            pc.addTransceiver(kind, direction=direction)
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


async def test_a_real_aiortc_publisher_offer_is_accepted() -> None:
    summary = check_offer(await aiortc_offer(audio="sendonly"), direction="publish")
    assert summary.audio_direction == "sendonly"
    assert summary.ice_ufrag and summary.ice_pwd
    assert summary.media_count == 1


async def test_a_real_aiortc_player_offer_is_accepted_and_refused_for_publishing() -> None:
    offer = await aiortc_offer(audio="recvonly")
    assert check_offer(offer, direction="play").audio_direction == "recvonly"
    with pytest.raises(UnsupportedOffer, match="audio is recvonly; to publish"):
        check_offer(offer, direction="publish")


async def test_a_real_aiortc_offer_with_video_is_accepted_for_its_audio() -> None:
    summary = check_offer(
        await aiortc_offer(audio="sendonly", video="sendonly"), direction="publish"
    )
    assert (summary.media_count, summary.has_video, summary.audio_mline_index) == (2, True, 0)


LONG_GARBAGE = "x" * 500

OFFER_ERRORS: list[tuple[str, str, Direction, type[HarkError], str]] = [
    (
        "too large",
        CHROME_OFFER + "a=x-pad:" + "p" * 70_000 + "\r\n",
        "publish",
        OfferTooLarge,
        rf"SDP offer is {len(CHROME_OFFER) + 70_010} bytes; the limit is 65536",
    ),
    ("empty", "\r\n \r\n", "publish", InvalidOffer, "SDP offer is empty"),
    ("garbage", "hello", "publish", InvalidOffer, "line 1 must be v=0, got 'hello'"),
    (
        "missing v=",
        edit("v=0\r\n", ""),
        "publish",
        InvalidOffer,
        "line 1 must be v=0, got 'o=- 3470473375913452096",
    ),
    (
        "a line not in x=value form",
        edit("s=-\r\n", "s=-\r\nthis is not sdp\r\n"),
        "publish",
        InvalidOffer,
        "line 4 is not of the form x=value: 'this is not sdp'",
    ),
    (
        "a carriage return inside a line (aiortc would split the line there)",
        edit("a=extmap:1 ", "a=extmap\r1 "),
        "publish",
        InvalidOffer,
        r"line \d+ has a line break inside it \(SDP lines end with CRLF\): 'a=extmap\\r1 ",
    ),
    (
        "a long bad line is quoted truncated",
        "v=0\r\n" + LONG_GARBAGE + "\r\n",
        "publish",
        InvalidOffer,
        rf"line 2 is not of the form x=value: '{'x' * 77}\.\.\.'$",
    ),
    (
        "m= line with a word for a port",
        "v=0\r\nm=audio x\r\n",
        "publish",
        InvalidOffer,
        "line 2 is a malformed m= line .*'m=audio x'",
    ),
    (
        "m= line without formats",
        edit("m=audio 54611 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126", "m=audio 9 RTP/AVP"),
        "publish",
        InvalidOffer,
        "line 8 is a malformed m= line",
    ),
    (
        "m= line port out of range",
        edit("m=audio 54611", "m=audio 70000"),
        "publish",
        InvalidOffer,
        "line 8 is a malformed m= line",
    ),
    (
        "m= line port in non-ASCII digits",
        edit("m=audio 54611", "m=audio ²"),
        "publish",
        InvalidOffer,
        "line 8 is a malformed m= line",
    ),
    ("no m-line at all", "v=0\r\ns=-\r\nt=0 0\r\n", "publish", UnsupportedOffer, "no audio m-line"),
    (
        "audio port 0",
        edit("m=audio 54611", "m=audio 0"),
        "publish",
        UnsupportedOffer,
        r"offer has no audio m-line \(line 8 has port 0\)",
    ),
    (
        "video only",
        edit("m=audio", "m=video"),
        "publish",
        UnsupportedOffer,
        "offer has no audio m-line$",
    ),
    (
        "PCMU only",
        edit("111 63 9 0 8 13 110 126", "0"),
        "publish",
        UnsupportedOffer,
        r"offer's audio has no Opus codec \(opus/48000/2\); offered: PCMU$",
    ),
    (
        "no Opus among several codecs",
        edit("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 G722/8000"),
        "publish",
        UnsupportedOffer,
        "no Opus codec .*; offered: G722, red, PCMU, PCMA, CN, telephone-event$",
    ),
    (
        "Opus at the wrong clock rate",
        edit("opus/48000/2", "opus/16000"),
        "publish",
        UnsupportedOffer,
        "no Opus codec .*; offered: opus/16000, red,",
    ),
    (
        "Opus mapped but not in the m-line",
        edit("111 63 9 0 8 13 110 126", "0 8"),
        "publish",
        UnsupportedOffer,
        "no Opus codec .*; offered: PCMU, PCMA$",
    ),
    (
        "recvonly for publish",
        edit("a=sendonly", "a=recvonly"),
        "publish",
        UnsupportedOffer,
        "offer's audio is recvonly; to publish it must be sendonly or sendrecv",
    ),
    (
        "inactive for publish",
        edit("a=sendonly", "a=inactive"),
        "publish",
        UnsupportedOffer,
        "offer's audio is inactive; to publish",
    ),
    (
        "sendonly for play",
        CHROME_OFFER,
        "play",
        UnsupportedOffer,
        "offer's audio is sendonly; to play it must be recvonly",
    ),
    (
        "inactive for play",
        edit("a=sendonly", "a=inactive"),
        "play",
        UnsupportedOffer,
        "offer's audio is inactive; to play",
    ),
    (
        "too many m-lines",
        CHROME_OFFER + VIDEO * 4,
        "publish",
        UnsupportedOffer,
        "offer has 5 m-lines; at most 4 are accepted",
    ),
    (
        "no ICE password",
        edit("a=ice-pwd:0nCJGm0r8d5ZQ0m8vHYf4Ywa\r\n", ""),
        "publish",
        InvalidOffer,
        "no a=ice-ufrag and a=ice-pwd",
    ),
    (
        "no DTLS fingerprint",
        edit("a=fingerprint:", "a=x-fingerprint:"),
        "publish",
        InvalidOffer,
        "no a=fingerprint",
    ),
    (
        "malformed fingerprint",
        edit("sha-256 7B:", "sha-256 ZZ:"),
        "publish",
        InvalidOffer,
        "a=fingerprint is malformed: 'sha-256 ZZ:8B",
    ),
    (
        "fingerprint of the wrong length",
        edit(":19:08", ":19"),
        "publish",
        InvalidOffer,
        "a=fingerprint is malformed",
    ),
    (
        "a port count on the audio m-line",
        edit("m=audio 54611 ", "m=audio 54611/2 "),
        "publish",
        InvalidOffer,
        r"line 8 gives a port count \(54611/2\); WebRTC m-lines have one port each",
    ),
    (
        "two m-lines with the same mid",
        CHROME_OFFER + VIDEO.replace("a=mid:1", "a=mid:0"),
        "publish",
        InvalidOffer,
        "m-line at line 41 repeats a=mid:0 of the m-line at line 8; each m-line needs its own mid",
    ),
    (
        "bundle-only audio outside the BUNDLE group",
        edit("m=audio 54611", "m=audio 0", edit("a=mid:0", "a=mid:0\r\na=bundle-only")).replace(
            "a=group:BUNDLE 0", "a=group:BUNDLE 1"
        ),
        "publish",
        UnsupportedOffer,
        r"offer has no audio m-line \(line 8 has port 0\)",
    ),
    (
        "audio without rtcp-mux",
        edit("a=rtcp-mux\r\n", ""),
        "publish",
        InvalidOffer,
        r"the audio m-line at line 8 has no a=rtcp-mux \(WebRTC sends RTP and RTCP on one port",
    ),
    (
        "garbled transport protocol",
        edit("UDP/TLS/RTP/SAVPF", "UDP/:LS/RTP/SAVPF"),
        "publish",
        InvalidOffer,
        r"line 8: 'UDP/:LS/RTP/SAVPF' is not a transport protocol",
    ),
    (
        "payload type out of range",
        edit("111 63 9 0", "111 300 9 0"),
        "publish",
        InvalidOffer,
        r"line 8: format '300' is not an RTP payload type \(0-127 but 72-76\)",
    ),
    (
        "payload type reserved for RTCP",
        edit("111 63 9 0", "111 72 9 0"),
        "publish",
        InvalidOffer,
        "line 8: format '72' is not an RTP payload type",
    ),
    (
        "offer candidate with a word for a priority",
        edit("udp 2122260223 192.0.2.10", "udp high 192.0.2.10"),
        "publish",
        InvalidOffer,
        "line 11: a candidate's component, priority and port must be numbers",
    ),
    (
        "offer candidate with a garbled rport",
        edit("rport 54611", "rport :4611"),
        "publish",
        InvalidOffer,
        "line 12: a candidate's rport must be a number",
    ),
    (
        "extmap without a URI",
        edit("a=extmap:1 urn:", "a=extmap:1urn:"),
        "publish",
        InvalidOffer,
        "line 20: a=extmap needs a numeric id and a URI",
    ),
    (
        "fmtp without parameters",
        edit("a=fmtp:63 111/111", "a=fmtp:63"),
        "publish",
        InvalidOffer,
        "line 32: a=fmtp needs a payload type and parameters",
    ),
    (
        "fmtp with a word for a number",
        edit("minptime=10", "minptime=ten"),
        "publish",
        InvalidOffer,
        "line 30: fmtp parameter minptime must be a number",
    ),
    (
        "rtpmap with a word for a clock rate",
        edit("opus/48000/2", "opus/x8000/2"),
        "publish",
        InvalidOffer,
        "line 28: a=rtpmap must be '<payload type> <encoding>/<clock rate>",
    ),
    (
        "ssrc that is not a number",
        edit("a=ssrc:1129446914 cname", "a=ssrc:11/29446914 cname"),
        "publish",
        InvalidOffer,
        "line 39: a=ssrc needs a numeric SSRC and an attribute",
    ),
    (
        "garbled a=rtcp",
        edit("a=rtcp:9 IN IP4", "a=rtcp:9 I  IP4"),
        "publish",
        InvalidOffer,
        "line 10: a=rtcp must be '<port>' or '<port> IN IP4 <address>'",
    ),
    (
        "garbled connection line",
        edit("c=IN IP4 192.0.2.10", "c=IN IPX 192.0.2.10"),
        "publish",
        InvalidOffer,
        "line 9: c= must be 'IN IP4 <address>' or 'IN IP6 <address>'",
    ),
    (
        "bad DTLS setup role",
        edit("a=setup:actpass", "a=setup:sideways"),
        "publish",
        InvalidOffer,
        "a=setup must be actpass, active or passive, got 'sideways'",
    ),
]


@pytest.mark.parametrize(
    ("offer", "direction", "error", "message"),
    [case[1:] for case in OFFER_ERRORS],
    ids=[case[0] for case in OFFER_ERRORS],
)
def test_offers_hark_cannot_serve_are_refused_with_the_reason(
    offer: str, direction: Direction, error: type[HarkError], message: str
) -> None:
    with pytest.raises(error, match=message):
        check_offer(offer, direction=direction)


# webrtcbin's max-bundle policy: only the first m-line of the BUNDLE group has a port.
MAX_BUNDLE_OFFER = (
    edit("a=group:BUNDLE 0", "a=group:BUNDLE 1 0")
    .replace("a=mid:0", "a=mid:0\r\na=bundle-only")
    .replace("m=audio 54611", VIDEO.replace("m=video 9", "m=video 54611") + "m=audio 0")
)


def test_a_bundle_only_audio_m_line_with_port_0_is_enabled() -> None:
    summary = check_offer(MAX_BUNDLE_OFFER, direction="publish")
    assert summary.audio_mline_index == 1
    assert summary.audio_mid == "0"
    assert summary.opus_payload_type == 111


def test_the_stack_sees_only_opus_on_the_offers_payload_type_in_the_answered_m_line() -> None:
    rewritten = stack_offer(CHROME_OFFER).sdp
    assert "m=audio 54611 UDP/TLS/RTP/SAVPF 111\r\n" in rewritten
    kept = [line for line in rewritten.split("\r\n") if line.startswith(("a=rtpmap", "a=fmtp"))]
    assert kept == ["a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1"]
    assert "a=rtcp-fb:111 transport-cc" in rewritten
    assert check_offer(rewritten, direction="publish").opus_payload_type == 111


def test_an_actpass_offer_reaches_the_stack_as_active_so_hark_answers_passive() -> None:
    rewritten = stack_offer(CHROME_OFFER).sdp
    assert "a=setup:active\r\n" in rewritten and "actpass" not in rewritten
    for role in ("active", "passive"):
        offer = edit("a=setup:actpass", f"a=setup:{role}")
        assert f"a=setup:{role}\r\n" in stack_offer(offer).sdp


def test_a_session_level_direction_reaches_the_stack_in_each_m_line() -> None:
    offer = edit("a=sendonly\r\n", "").replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n")
    lines = stack_offer(offer + VIDEO).sdp.split("\r\n")
    assert lines.count("a=sendonly") == 2
    assert lines.index("a=sendonly") == lines.index("m=audio 54611 UDP/TLS/RTP/SAVPF 111") + 1


def test_mdns_candidates_are_taken_out_with_end_of_candidates_and_ip_ones_stay() -> None:
    mdns = "candidate:1 1 udp 2122260223 0f1e2d3c-aaaa-4bbb-8ccc-123456789abc.local 5000 typ host"
    offer = edit("a=ice-ufrag:", f"a={mdns}\r\na=end-of-candidates\r\na=ice-ufrag:", CHROME_OFFER)
    stacked = stack_offer(offer)
    assert stacked.mdns_candidates == (TrickleCandidate("0", 0, mdns),)
    assert stacked.end_of_candidates
    assert ".local" not in stacked.sdp and "end-of-candidates" not in stacked.sdp
    assert stacked.sdp.count("a=candidate:") == 3


def test_an_m_line_without_any_direction_reaches_the_stack_as_sendrecv() -> None:
    rewritten = stack_offer(edit("a=sendonly\r\n", "")).sdp.split("\r\n")
    assert rewritten[rewritten.index("m=audio 54611 UDP/TLS/RTP/SAVPF 111") + 1] == "a=sendrecv"


def test_without_mdns_candidates_end_of_candidates_stays() -> None:
    offer = edit("a=ice-ufrag:", "a=end-of-candidates\r\na=ice-ufrag:")
    stacked = stack_offer(offer)
    assert stacked.mdns_candidates == () and stacked.end_of_candidates
    assert "a=end-of-candidates" in stacked.sdp


def test_the_size_limit_is_the_callers_and_counts_utf8_bytes() -> None:
    offer = CHROME_OFFER + "a=x-note:é\r\n"
    size = len(offer.encode())
    assert check_offer(offer, direction="publish", max_bytes=size)
    with pytest.raises(OfferTooLarge, match=f"is {size} bytes; the limit is {size - 1}$"):
        check_offer(offer, direction="publish", max_bytes=size - 1)


def test_the_m_line_limit_is_the_callers() -> None:
    assert check_offer(CHROME_OFFER + VIDEO, direction="publish").media_count == 2
    with pytest.raises(UnsupportedOffer, match="2 m-lines; at most 1"):
        check_offer(CHROME_OFFER + VIDEO, direction="publish", max_media=1)


FRAGMENT = "\r\n".join(
    [
        "a=ice-ufrag:Qx7j",
        "a=ice-pwd:0nCJGm0r8d5ZQ0m8vHYf4Ywa",
        "a=ice-options:trickle",
        "a=group:BUNDLE 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "a=candidate:2881337548 1 udp 2122260223 192.0.2.10 54611 typ host generation 0",
        "a=candidate:3796587612 1 udp 1686052607 198.51.100.23 54611 typ srflx "
        "raddr 192.0.2.10 rport 54611 generation 0",
        "a=end-of-candidates",
        "",
    ]
)


def test_a_trickle_fragment_yields_its_credentials_and_candidates_in_order() -> None:
    fragment = parse_trickle_fragment(FRAGMENT)
    assert (fragment.ice_ufrag, fragment.ice_pwd) == ("Qx7j", "0nCJGm0r8d5ZQ0m8vHYf4Ywa")
    assert fragment.candidates == (
        TrickleCandidate(
            "0", 0, "candidate:2881337548 1 udp 2122260223 192.0.2.10 54611 typ host generation 0"
        ),
        TrickleCandidate(
            "0",
            0,
            "candidate:3796587612 1 udp 1686052607 198.51.100.23 54611 typ srflx "
            "raddr 192.0.2.10 rport 54611 generation 0",
        ),
    )
    assert fragment.end_of_candidates


def test_trickled_candidates_are_ones_aiortc_can_use() -> None:
    for trickled in parse_trickle_fragment(FRAGMENT).candidates:
        candidate = candidate_from_sdp(trickled.candidate.removeprefix("candidate:"))
        assert candidate.port == 54611


def test_candidates_are_attributed_to_their_m_line_and_mid() -> None:
    body = "\n".join(
        [
            "a=candidate:1 1 udp 1 192.0.2.1 1000 typ host",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "a=mid:a",
            "a=candidate:2 1 udp 1 192.0.2.2 2000 typ host",
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
            "a=candidate:3 1 udp 1 192.0.2.3 3000 typ host",
            "a=mid:v",
            "a=candidate:4 1 udp 1 192.0.2.4 4000 typ host",
        ]
    )
    fragment = parse_trickle_fragment(body)
    assert [(c.mid, c.mline_index) for c in fragment.candidates] == [
        (None, 0),
        ("a", 0),
        (None, 1),
        ("v", 1),
    ]
    assert (fragment.ice_ufrag, fragment.ice_pwd, fragment.end_of_candidates) == (None, None, False)


def test_a_bare_end_of_candidates_is_a_fragment() -> None:
    fragment = parse_trickle_fragment("a=end-of-candidates\r\n")
    assert fragment.end_of_candidates and fragment.candidates == ()


@pytest.mark.parametrize(
    ("body", "current_pwd", "restart"),
    [
        (FRAGMENT, "0nCJGm0r8d5ZQ0m8vHYf4Ywa", False),
        ("a=end-of-candidates", "0nCJGm0r8d5ZQ0m8vHYf4Ywa", False),
        ("a=ice-ufrag:Qx7j\r\na=end-of-candidates", "0nCJGm0r8d5ZQ0m8vHYf4Ywa", False),
        ("a=ice-ufrag:Zz9k\r\na=ice-pwd:a-brand-new-password-0123", "0nCJGm0r8d5Z", True),
        ("a=ice-ufrag:Zz9k", "0nCJGm0r8d5ZQ0m8vHYf4Ywa", True),
        ("a=ice-ufrag:Qx7j\r\na=ice-pwd:a-brand-new-password-0123", "0nCJGm0r8d5Z", True),
        ("a=ice-ufrag:Qx7j\r\na=ice-pwd:a-brand-new-password-0123", None, False),
    ],
)
def test_an_ice_restart_is_a_change_of_credentials(
    body: str, current_pwd: str | None, restart: bool
) -> None:
    assert is_ice_restart(parse_trickle_fragment(body), "Qx7j", current_pwd) is restart


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "trickle fragment is empty"),
        ("  \r\n\r\n", "trickle fragment is empty"),
        ("nonsense", "line 1 is not of the form x=value: 'nonsense'"),
        ("a=mid:0\ra=candidate:1 1 udp 5 192.0.2.1 9 typ host", "line 1 has a line break inside"),
        ("a=mid:0\x0ca=end-of-candidates", "line 1 has a line break inside"),
        ("a=mid:0\r\n\r\n a=candidate:1 1 udp 1 192.0.2.1 9 typ host", "line 3 is not of the form"),
        ("a=candidate:1 1 udp 5 192.0.2.1", "line 1: a candidate needs foundation, component"),
        ("a=candidate", "a candidate needs"),
        ("a=mid:0\na=candidate:1 1 udp 5 192.0.2.1 9 kind host", "line 2: a candidate needs"),
        ("a=candidate:1 x udp 5 192.0.2.1 9 typ host", "component, priority and port must be"),
        ("a=candidate:1 1 udp high 192.0.2.1 9 typ host", "component, priority and port must be"),
        ("a=candidate:1 1 udp 5 192.0.2.1 nine typ host", "component, priority and port must be"),
        ("a=candidate:1 1 udp 5 192.0.2.1 ² typ host", "component, priority and port must be"),
        ("a=candidate:1 1 udp 5 192.0.2.1 70000 typ host", "port 70000 is out of range"),
        ("a=ice-ufrag:\r\na=end-of-candidates", "line 1: a=ice-ufrag has no value"),
    ],
)
def test_malformed_fragments_are_refused_naming_the_problem(body: str, message: str) -> None:
    with pytest.raises(InvalidTrickle, match=message):
        parse_trickle_fragment(body)


def assert_only_documented_errors(text: str) -> None:
    directions: tuple[Direction, ...] = ("publish", "play")
    for direction in directions:
        try:
            summary = check_offer(text, direction=direction, max_bytes=4096)
        except (OfferTooLarge, InvalidOffer, UnsupportedOffer) as exc:
            assert str(exc)
        else:
            # What Hark accepts, it hands the stack in a form it still accepts, Opus unmoved.
            again = check_offer(stack_offer(text).sdp, direction=direction, max_bytes=8192)
            assert again.opus_payload_type == summary.opus_payload_type
    try:
        parse_trickle_fragment(text)
    except InvalidTrickle as exc:
        assert str(exc)


@st.composite
def mutated(draw: st.DrawFn, lines: list[str]) -> str:
    """A known-good body with a few lines dropped, duplicated, garbled, inserted or swapped."""
    lines = list(lines)
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(0, len(lines) - 1))
        operation = draw(st.sampled_from(["drop", "dup", "garble", "insert", "swap"]))
        if operation == "drop" and len(lines) > 1:
            del lines[index]
        elif operation == "dup":
            lines.insert(index, lines[index])
        elif operation == "garble":
            at = draw(st.integers(0, len(lines[index])))
            lines[index] = lines[index][:at] + draw(st.text(max_size=6)) + lines[index][at + 1 :]
        elif operation == "insert":
            lines.insert(index, draw(st.text(max_size=40)))
        elif operation == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[index], lines[other] = lines[other], lines[index]
    return draw(st.sampled_from(["\r\n", "\n"])).join(lines)


@settings(deadline=None, max_examples=300)
@given(
    st.one_of(
        st.text(max_size=400),
        st.binary(max_size=400).map(lambda b: b.decode("utf-8", errors="replace")),
        st.binary(max_size=400).map(lambda b: b.decode("latin-1")),
        st.text(max_size=200).map(lambda t: "v=0\r\nm=audio " + t),
        mutated(CHROME_OFFER_LINES),
        mutated(FRAGMENT.split("\r\n")),
    )
)
def test_no_input_raises_anything_but_the_documented_errors(text: str) -> None:
    assert_only_documented_errors(text)
