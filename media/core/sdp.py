"""Pure checks of WHIP/WHEP SDP offers and their rewrite for aiortc: text in, facts or a
HarkError out.

SDP is RFC 8866, WHIP is RFC 9725. Trickle fragments and candidate lines are in
``media.core.trickle``. Nothing here does I/O or touches the WebRTC stack, so the edges can
refuse a bad offer with a precise 4xx before aiortc ever sees it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from media.core.sdp_lines import ascii_int, numbered_lines, quote, split_typed_line
from media.core.trickle import TrickleCandidate, check_candidate, is_mdns_candidate
from media.errors import InvalidOffer, OfferTooLarge, UnsupportedOffer

Direction = Literal["publish", "play"]

_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_NEEDED = {"publish": ("sendonly", "sendrecv"), "play": ("recvonly",)}
_STATIC_PAYLOADS = {0: "PCMU", 3: "GSM", 4: "G723", 8: "PCMA", 9: "G722", 13: "CN", 18: "G729"}
_FINGERPRINT_BYTES = {"sha-1": 20, "sha-224": 28, "sha-256": 32, "sha-384": 48, "sha-512": 64}
_HEX_PAIR = re.compile(r"[0-9A-Fa-f]{2}")
_SETUP_ROLES = ("actpass", "active", "passive")


@dataclass(frozen=True, slots=True)
class OfferSummary:
    """What Hark needs to know about an offer it accepted."""

    audio_mid: str | None
    ice_ufrag: str | None
    ice_pwd: str | None
    opus_payload_type: int
    audio_direction: str
    media_count: int
    has_video: bool
    audio_mline_index: int


@dataclass(frozen=True, slots=True)
class _Section:
    line: int
    kind: str
    port: int
    proto: str
    formats: tuple[str, ...]
    attributes: tuple[str, ...]


def _values(attributes: tuple[str, ...], name: str) -> list[str]:
    prefix = name + ":"
    return [a[len(prefix) :].strip() for a in attributes if a.startswith(prefix)]


def _first(attributes: tuple[str, ...], name: str) -> str | None:
    values = _values(attributes, name)
    return values[0] if values and values[0] else None


def _parse_offer(sdp: str) -> tuple[tuple[str, ...], list[_Section]]:
    lines = numbered_lines(sdp)
    if not lines:
        raise InvalidOffer("SDP offer is empty")
    if lines[0][1] != "v=0":
        raise InvalidOffer(f"line {lines[0][0]} must be v=0, got {quote(lines[0][1])}")
    session: list[str] = []
    sections: list[tuple[int, str, int, str, tuple[str, ...], list[str]]] = []
    for number, line in lines[1:]:
        kind, value = split_typed_line(number, line, InvalidOffer)
        if kind == "m":
            fields = value.split()
            port = ascii_int(fields[1].partition("/")[0]) if len(fields) > 1 else None
            if len(fields) < 4 or port is None or port > 65535:
                raise InvalidOffer(
                    f"line {number} is a malformed m= line (want 'm=<media> <port> <proto> "
                    f"<format> ...'): {quote('m=' + value)}"
                )
            if "/" in fields[1]:
                raise InvalidOffer(
                    f"line {number} gives a port count ({fields[1]}); WebRTC m-lines have one "
                    f"port each: {quote('m=' + value)}"
                )
            sections.append((number, fields[0], port, fields[2], tuple(fields[3:]), []))
        elif kind == "a":
            (sections[-1][5] if sections else session).append(value)
    return tuple(session), [_Section(n, k, p, t, f, tuple(a)) for n, k, p, t, f, a in sections]


def _check_unique_mids(sections: list[_Section]) -> None:
    first_line: dict[str, int] = {}
    for section in sections:
        mid = _first(section.attributes, "mid")
        if mid is None:
            continue
        if mid in first_line:
            raise InvalidOffer(
                f"m-line at line {section.line} repeats a=mid:{mid} of the m-line at line "
                f"{first_line[mid]}; each m-line needs its own mid"
            )
        first_line[mid] = section.line


_PROTO = re.compile(r"[A-Z]+(/[A-Z]+)+")
_RESERVED_PAYLOAD_TYPES = range(72, 77)  # they collide with RTCP packet types (RFC 5761 4)
_EXTMAP = re.compile(r"extmap:[0-9]{1,5}(/[a-z]+)? \S+")
_CONNECTION = re.compile(r"IN IP[46] \S+")
_RTCP = re.compile(r"rtcp:[0-9]{1,5}( IN IP[46] \S+)?")
_RTPMAP = re.compile(r"rtpmap:[0-9]{1,3} [^/\s]+/[0-9]{1,10}(/[0-9]{1,2})?")
_SSRC = re.compile(r"ssrc:[0-9]{1,10} \S.*|ssrc-group:\S+( [0-9]{1,10})*")
_VALUELESS_SSRC = re.compile(r"ssrc:[0-9]+ [^:]+")
_INTEGER_PARAMETERS = (
    "apt",
    "max-fr",
    "max-fs",
    "maxplaybackrate",
    "minptime",
    "stereo",
    "useinbandfec",
)


def _check_rtp_section(section: _Section) -> None:
    """What WebRTC needs of an audio or video m-line: RTP payload types, a transport protocol."""
    if section.kind not in ("audio", "video"):
        return
    if not _PROTO.fullmatch(section.proto):
        raise InvalidOffer(
            f"line {section.line}: {section.proto!r} is not a transport protocol "
            f"(WebRTC uses UDP/TLS/RTP/SAVPF)"
        )
    for fmt in section.formats:
        pt = ascii_int(fmt)
        if pt is None or pt > 127 or pt in _RESERVED_PAYLOAD_TYPES:
            raise InvalidOffer(
                f"line {section.line}: format {fmt!r} is not an RTP payload type (0-127 but 72-76)"
            )


def _check_media_attributes(sdp: str) -> None:
    """Attribute lines whose values must parse, each named by its line when they do not."""
    for number, line in numbered_lines(sdp):
        value = line[2:]
        if line.startswith("a=candidate:"):
            check_candidate(number, value, InvalidOffer)
        elif line.startswith("a=extmap:") and not _EXTMAP.fullmatch(value):
            raise InvalidOffer(
                f"line {number}: a=extmap needs a numeric id and a URI: {quote(line)}"
            )
        elif line.startswith("a=fmtp:"):
            _check_fmtp(number, line)
        elif line.startswith("a=rtcp:") and not _RTCP.fullmatch(value):
            raise InvalidOffer(
                f"line {number}: a=rtcp must be '<port>' or '<port> IN IP4 <address>': "
                f"{quote(line)}"
            )
        elif line.startswith("a=rtpmap:") and not _RTPMAP.fullmatch(value):
            raise InvalidOffer(
                f"line {number}: a=rtpmap must be '<payload type> <encoding>/<clock rate>"
                f"[/<channels>]': {quote(line)}"
            )
        elif line.startswith("a=ssrc") and not _SSRC.fullmatch(value):
            raise InvalidOffer(
                f"line {number}: a=ssrc needs a numeric SSRC and an attribute: {quote(line)}"
            )
        elif line.startswith("c=") and not _CONNECTION.fullmatch(value):
            raise InvalidOffer(
                f"line {number}: c= must be 'IN IP4 <address>' or 'IN IP6 <address>': {quote(line)}"
            )


def _check_fmtp(number: int, line: str) -> None:
    fmt, _, parameters = line[len("a=fmtp:") :].partition(" ")
    if ascii_int(fmt) is None or not parameters.strip():
        raise InvalidOffer(
            f"line {number}: a=fmtp needs a payload type and parameters: {quote(line)}"
        )
    for parameter in parameters.split(";"):
        name, equals, value = parameter.strip().partition("=")
        if equals and name in _INTEGER_PARAMETERS and ascii_int(value.strip()) is None:
            raise InvalidOffer(f"line {number}: fmtp parameter {name} must be a number")


def _bundle_mids(session: tuple[str, ...]) -> set[str]:
    mids: set[str] = set()
    for group in _values(session, "group"):
        semantics, *members = group.split()
        if semantics == "BUNDLE":
            mids.update(members)
    return mids


def _is_enabled(section: _Section, bundle_mids: set[str]) -> bool:
    """Port 0 disables an m-line, except one that is bundle-only (RFC 8843 section 7.2)."""
    if section.port != 0:
        return True
    return "bundle-only" in section.attributes and _first(section.attributes, "mid") in bundle_mids


def _chosen_audio(session: tuple[str, ...], sections: list[_Section]) -> tuple[int, _Section]:
    """The audio m-line Hark answers: the first enabled one."""
    bundle_mids = _bundle_mids(session)
    audio_sections = [(i, s) for i, s in enumerate(sections) if s.kind == "audio"]
    enabled = [(i, s) for i, s in audio_sections if _is_enabled(s, bundle_mids)]
    if not enabled:
        disabled = f" (line {audio_sections[0][1].line} has port 0)" if audio_sections else ""
        raise UnsupportedOffer(f"offer has no audio m-line{disabled}")
    return enabled[0]


def _opus_payload_type(section: _Section) -> int | None:
    return next((pt for pt, encoding in _codecs(section) if _is_opus(encoding)), None)


def _codecs(section: _Section) -> list[tuple[int, str]]:
    """``(payload type, encoding)`` in the order of the m-line, e.g. (111, "opus/48000/2")."""
    rtpmap: dict[str, str] = {}
    for value in _values(section.attributes, "rtpmap"):
        fmt, _, mapped = value.partition(" ")
        rtpmap.setdefault(fmt, mapped.strip())
    codecs = []
    for fmt in section.formats:
        pt = ascii_int(fmt)
        if pt is None:
            continue
        encoding = rtpmap.get(fmt) or _STATIC_PAYLOADS.get(pt)
        if encoding:
            codecs.append((pt, encoding))
    return codecs


def _is_opus(encoding: str) -> bool:
    return encoding.lower() == "opus/48000/2"


def _check_dtls(media: tuple[str, ...], session: tuple[str, ...]) -> None:
    """DTLS-SRTP needs well-formed fingerprints and a setup role (RFC 8122, RFC 5763)."""
    fingerprints = _values(media, "fingerprint") or _values(session, "fingerprint")
    if not fingerprints:
        raise InvalidOffer("offer has no a=fingerprint (DTLS-SRTP is required)")
    for fingerprint in fingerprints:
        algorithm, _, digest = fingerprint.partition(" ")
        octets = digest.strip().split(":")
        if len(octets) != _FINGERPRINT_BYTES.get(algorithm.lower()) or not all(
            _HEX_PAIR.fullmatch(octet) for octet in octets
        ):
            raise InvalidOffer(f"a=fingerprint is malformed: {quote(fingerprint)}")
    setup = _first(media, "setup") or _first(session, "setup")
    if setup not in _SETUP_ROLES:
        raise InvalidOffer(f"a=setup must be actpass, active or passive, got {setup!r}")


def check_offer(
    sdp: str, *, direction: Direction, max_bytes: int = 65536, max_media: int = 4
) -> OfferSummary:
    """Check that ``sdp`` is an offer Hark can answer, and summarise it.

    ``direction`` is what the client wants: "publish" (WHIP: its audio must send) or "play" (WHEP:
    its audio must receive). Raises ``OfferTooLarge``, ``InvalidOffer`` (not SDP, or not usable by
    WebRTC: no ICE credentials or DTLS fingerprint) or ``UnsupportedOffer`` (too many m-lines, no
    enabled audio, no Opus, wrong direction), each with a message that says what is wrong.
    """
    size = len(sdp.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise OfferTooLarge(f"SDP offer is {size} bytes; the limit is {max_bytes}")
    session, sections = _parse_offer(sdp)
    if len(sections) > max_media:
        raise UnsupportedOffer(
            f"offer has {len(sections)} m-lines; at most {max_media} are accepted"
        )
    _check_unique_mids(sections)
    for section in sections:
        _check_rtp_section(section)
    _check_media_attributes(sdp)
    index, audio = _chosen_audio(session, sections)
    codecs = _codecs(audio)
    opus = _opus_payload_type(audio)
    if opus is None:
        names = (e if e.lower().startswith("opus/") else e.split("/")[0] for _, e in codecs)
        offered = ", ".join(dict.fromkeys(names)) or "none"
        raise UnsupportedOffer(
            f"offer's audio has no Opus codec (opus/48000/2); offered: {offered}"
        )

    audio_direction = next(
        (a for a in audio.attributes if a in _DIRECTIONS),
        next((a for a in session if a in _DIRECTIONS), "sendrecv"),
    )
    needed = _NEEDED[direction]
    if audio_direction not in needed:
        raise UnsupportedOffer(
            f"offer's audio is {audio_direction}; to {direction} it must be {' or '.join(needed)}"
        )

    if "rtcp-mux" not in audio.attributes:
        raise InvalidOffer(
            f"the audio m-line at line {audio.line} has no a=rtcp-mux "
            f"(WebRTC sends RTP and RTCP on one port, RFC 8858)"
        )
    ice_ufrag = _first(audio.attributes, "ice-ufrag") or _first(session, "ice-ufrag")
    ice_pwd = _first(audio.attributes, "ice-pwd") or _first(session, "ice-pwd")
    if ice_ufrag is None or ice_pwd is None:
        raise InvalidOffer("offer's audio has no a=ice-ufrag and a=ice-pwd (ICE is required)")
    _check_dtls(audio.attributes, session)
    return OfferSummary(
        audio_mid=_first(audio.attributes, "mid"),
        ice_ufrag=ice_ufrag,
        ice_pwd=ice_pwd,
        opus_payload_type=opus,
        audio_direction=audio_direction,
        media_count=len(sections),
        has_video=any(s.kind == "video" and s.port != 0 for s in sections),
        audio_mline_index=index,
    )


@dataclass(frozen=True, slots=True)
class StackOffer:
    """An accepted offer rewritten for aiortc, and the mDNS candidates taken out of it."""

    sdp: str
    mdns_candidates: tuple[TrickleCandidate, ...]
    end_of_candidates: bool


def stack_offer(sdp: str) -> StackOffer:
    """Rewrite an offer that ``check_offer`` accepted into what aiortc must see to answer it well.

    - The answered audio m-line keeps only Opus, so the answer carries Opus alone, on the offer's
      payload type (aiortc fixes its codecs when it applies the offer).
    - ``a=setup:actpass`` becomes ``active``, so Hark answers ``passive`` and is the DTLS server
      with its own (ECDSA) certificate: as a client, aiortc offers only ECDSA suites, which a peer
      with an RSA certificate (GStreamer's webrtcbin) cannot accept.
    - A session-level direction moves into the m-lines that have none (aiortc reads it only there);
      with none anywhere, they get RFC 8866's default, ``sendrecv``.
    - ``a=fmtp`` and ``a=rtcp-fb`` lines for payload types their m-line does not list go, and
      m-lines Hark answers inactive get the ``a=rtcp-mux`` aiortc wants of every m-line.
    - ``a=ssrc`` lines with a value-less attribute (RFC 5576 allows them) go: aiortc cannot read
      them, and Hark needs none of them.
    - mDNS host candidates come out, to be resolved after the answer: aiortc resolves them while
      applying the offer (a second each), and with ``a=end-of-candidates`` an unresolved one leaves
      the ICE component without candidates, so the answer has none of Hark's. The
      ``end-of-candidates`` goes too, as the peer may still be reached through peer-reflexive
      candidates (RFC 8445 section 7.3.1.3).
    """
    session, sections = _parse_offer(sdp)
    audio_index, audio = _chosen_audio(session, sections)
    opus = _opus_payload_type(audio)
    session_direction = next((a for a in session if a in _DIRECTIONS), None)
    mdns = [
        TrickleCandidate(_first(s.attributes, "mid"), i, a)
        for i, s in enumerate(sections)
        for a in s.attributes
        if a.startswith("candidate:") and is_mdns_candidate(a)
    ]
    index = -1
    kept: list[str] = []
    for _, line in numbered_lines(sdp):
        value = line[2:]
        if line.startswith("m="):
            index += 1
            kept.append(_opus_m_line(line, opus) if index == audio_index else line)
            if not any(a in _DIRECTIONS for a in sections[index].attributes):
                kept.append("a=" + (session_direction or "sendrecv"))
            if "rtcp-mux" not in sections[index].attributes:
                kept.append("a=rtcp-mux")  # aiortc needs it even on m-lines answered inactive
            continue
        if index == -1 and value in _DIRECTIONS:
            continue
        if index == audio_index and _is_other_codec_line(value, opus):
            continue
        if index >= 0 and _is_unmapped_codec_line(value, sections[index]):
            continue
        if value.startswith("candidate:") and is_mdns_candidate(value):
            continue
        if _VALUELESS_SSRC.fullmatch(value):
            continue
        if mdns and value == "end-of-candidates":
            continue
        kept.append("a=setup:active" if value == "setup:actpass" else line)
    ended = any("end-of-candidates" in s.attributes for s in sections)
    return StackOffer("\r\n".join(kept) + "\r\n", tuple(mdns), ended)


def _opus_m_line(line: str, opus: int | None) -> str:
    fields = line.split()
    return " ".join(fields[:3] + [str(opus)]) if opus is not None else line


def _is_unmapped_codec_line(value: str, section: _Section) -> bool:
    name, _, rest = value.partition(":")
    if name not in ("fmtp", "rtcp-fb"):
        return False
    return rest.split(" ", 1)[0] not in {str(pt) for pt, _ in _codecs(section)} | {"*"}


def _is_other_codec_line(value: str, opus: int | None) -> bool:
    name, _, rest = value.partition(":")
    if name not in ("rtpmap", "fmtp", "rtcp-fb"):
        return False
    return rest.split(" ", 1)[0] not in (str(opus), "*")
