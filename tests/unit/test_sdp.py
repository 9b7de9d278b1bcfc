"""SDP offer checks and trickle-ICE fragments: pure text in, facts or precise errors out."""

from __future__ import annotations

import pytest
from aiortc import RTCPeerConnection
from hypothesis import given
from hypothesis import strategies as st

from media.errors import HarkError, InvalidOffer, InvalidTrickle, OfferTooLarge, UnsupportedOffer
from media.sdp import check_offer, is_ice_restart, parse_trickle_fragment
from tests.offers import OFFER


def test_a_browser_like_publish_offer_passes_and_is_summarised() -> None:
    summary = check_offer(OFFER, direction="publish")
    assert summary.opus_payload_type == 111
    assert (summary.ice_ufrag, summary.ice_pwd) == ("Hk3n", "abcdefghijklmnopqrstuvwx")
    assert summary.audio_direction == "sendonly"
    assert summary.audio_mid == "0"
    assert summary.media_count == 1 and not summary.has_video


async def test_a_real_aiortc_offer_passes() -> None:
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        summary = check_offer(pc.localDescription.sdp, direction="publish")
        assert summary.audio_direction == "sendonly"
    finally:
        await pc.close()


def replace(old: str, new: str, text: str = OFFER) -> str:
    assert old in text
    return text.replace(old, new)


VIDEO = "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"


@pytest.mark.parametrize(
    ("offer", "direction", "error", "message"),
    [
        ("v=0\r\n" + "a=x\r\n" * 20000, "publish", OfferTooLarge, "the limit is 65536"),
        ("hello", "publish", InvalidOffer, "must start with v=0"),
        ("v=0\r\nthis is not sdp\r\n", "publish", InvalidOffer, "line 2 is not of the form"),
        ("v=0\r\nm=audio x\r\n", "publish", InvalidOffer, "malformed m= line"),
        ("v=0\r\ns=-\r\n", "publish", UnsupportedOffer, "no audio m-line"),
        (replace("m=audio 9", "m=audio 0"), "publish", UnsupportedOffer, "no audio m-line"),
        (replace("m=audio", "m=video"), "publish", UnsupportedOffer, "no audio m-line"),
        (
            replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 G722/8000"),
            "publish",
            UnsupportedOffer,
            "no Opus codec; offered: G722, PCMA, PCMU",
        ),
        (replace("a=sendonly", "a=recvonly"), "publish", UnsupportedOffer, "audio is recvonly"),
        (replace("a=sendonly", "a=inactive"), "publish", UnsupportedOffer, "inactive"),
        (OFFER, "play", UnsupportedOffer, "audio is sendonly; a play needs sendrecv or recvonly"),
        (OFFER + VIDEO * 4, "publish", UnsupportedOffer, "5 m-lines; at most 4"),
        (replace("a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n", ""), "publish", InvalidOffer, "ice-pwd"),
        (replace("a=fingerprint:", "a=fingerprinx:"), "publish", InvalidOffer, "no a=fingerprint"),
        (replace("sha-256 AB:", "sha-256 ZZ:"), "publish", InvalidOffer, "malformed"),
        (replace("a=setup:actpass", "a=setup:sideways"), "publish", InvalidOffer, "a=setup"),
    ],
)
def test_offers_hark_cannot_serve_are_refused_with_the_reason(
    offer: str, direction: str, error: type[HarkError], message: str
) -> None:
    with pytest.raises(error, match=message):
        check_offer(offer, direction=direction)  # type: ignore[arg-type]


def test_direction_defaults_to_sendrecv_and_lf_line_endings_are_accepted() -> None:
    offer = replace("a=sendonly\r\n", "").replace("\r\n", "\n")
    assert check_offer(offer, direction="publish").audio_direction == "sendrecv"
    assert check_offer(offer, direction="play").audio_direction == "sendrecv"


FRAGMENT = "\r\n".join(
    [
        "a=ice-ufrag:Hk3n",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "a=candidate:1 1 udp 2130706431 192.0.2.7 50000 typ host",
        "a=candidate:2 1 udp 1694498815 198.51.100.1 50001 typ srflx raddr 0.0.0.0 rport 0",
        "a=end-of-candidates",
    ]
)


def test_a_trickle_fragment_yields_its_candidates_in_order() -> None:
    fragment = parse_trickle_fragment(FRAGMENT)
    assert (fragment.ice_ufrag, fragment.ice_pwd) == ("Hk3n", "abcdefghijklmnopqrstuvwx")
    assert [(c.mid, c.mline_index) for c in fragment.candidates] == [("0", 0), ("0", 0)]
    assert fragment.candidates[1].candidate.startswith("candidate:2 1 udp")
    assert fragment.end_of_candidates


def test_ice_restart_is_a_change_of_credentials() -> None:
    fragment = parse_trickle_fragment(FRAGMENT)
    assert not is_ice_restart(fragment, "Hk3n", "abcdefghijklmnopqrstuvwx")
    assert is_ice_restart(fragment, "other", "abcdefghijklmnopqrstuvwx")
    assert is_ice_restart(fragment, "Hk3n", "another-password-entirely")
    bare = parse_trickle_fragment("a=end-of-candidates")
    assert not is_ice_restart(bare, "Hk3n", "abcdefghijklmnopqrstuvwx")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "empty"),
        ("   \r\n", "empty"),
        ("nonsense", "line 1 is not of the form"),
        ("a=candidate:1 1 udp 5 1.2.3.4", "a candidate needs"),
        ("a=candidate:1 x udp 5 1.2.3.4 9 typ host", "must be numbers"),
        ("a=candidate:1 1 udp 5 1.2.3.4 70000 typ host", "port 70000 is out of range"),
        ("a=candidate:1 1 udp 5 1.2.3.4 9 kind host", "a candidate needs"),
    ],
)
def test_malformed_fragments_name_the_problem(body: str, message: str) -> None:
    with pytest.raises(InvalidTrickle, match=message):
        parse_trickle_fragment(body)


@given(st.text(max_size=400))
def test_no_text_raises_anything_but_the_documented_errors(text: str) -> None:
    for direction in ("publish", "play"):
        try:
            check_offer(text, direction=direction)  # type: ignore[arg-type]
        except HarkError:
            pass
    try:
        parse_trickle_fragment(text)
    except HarkError:
        pass
