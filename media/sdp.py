"""Pure checks of SDP offers (RFC 8866) and trickle-ICE fragments (RFC 8840): text in, facts out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from media.errors import InvalidOffer, InvalidTrickle, OfferTooLarge, UnsupportedOffer

Direction = Literal["publish", "play"]
_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_CAN_SEND = ("sendrecv", "sendonly")
_CAN_RECEIVE = ("sendrecv", "recvonly")
_FINGERPRINT_BYTES = {"sha-1": 20, "sha-224": 28, "sha-256": 32, "sha-384": 48, "sha-512": 64}
_SETUP_ROLES = ("actpass", "active", "passive")


@dataclass(frozen=True, slots=True)
class OfferSummary:
    audio_mid: str | None
    ice_ufrag: str | None
    ice_pwd: str | None
    opus_payload_type: int
    audio_direction: str
    media_count: int
    has_video: bool


@dataclass(frozen=True, slots=True)
class TrickleCandidate:
    mid: str | None
    mline_index: int
    candidate: str


@dataclass(frozen=True, slots=True)
class TrickleFragment:
    ice_ufrag: str | None
    ice_pwd: str | None
    candidates: tuple[TrickleCandidate, ...]
    end_of_candidates: bool


@dataclass(slots=True)
class _Media:
    kind: str
    port: int
    formats: list[str]
    attributes: list[str]


def _short(line: str) -> str:
    return line if len(line) <= 80 else line[:77] + "..."


def _lines(text: str) -> list[tuple[int, str]]:
    return [
        (number, line.strip())
        for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1)
        if line.strip()
    ]


def _split(number: int, line: str, error: type[InvalidOffer] | type[InvalidTrickle]) -> str:
    if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
        raise error(f"line {number} is not of the form x=value: {_short(line)!r}")
    return line[0]


def _parse_offer(sdp: str) -> tuple[list[str], list[_Media]]:
    lines = _lines(sdp)
    if not lines or lines[0][1] != "v=0":
        raise InvalidOffer("SDP offer must start with v=0")
    session: list[str] = []
    media: list[_Media] = []
    for number, line in lines:
        kind = _split(number, line, InvalidOffer)
        value = line[2:]
        if kind == "m":
            fields = value.split()
            if len(fields) < 4 or not fields[1].split("/")[0].isdigit():
                raise InvalidOffer(f"line {number} is a malformed m= line: {_short(line)!r}")
            media.append(_Media(fields[0].lower(), int(fields[1].split("/")[0]), fields[3:], []))
        elif kind == "a":
            (media[-1].attributes if media else session).append(value)
    return session, media


def _attribute(attributes: list[str], name: str) -> str | None:
    prefix = name + ":"
    for attribute in attributes:
        if attribute.startswith(prefix):
            return attribute[len(prefix) :].strip()
    return None


def _direction(attributes: list[str], default: str) -> str:
    for attribute in attributes:
        if attribute in _DIRECTIONS:
            return attribute
    return default


def _codecs(media: _Media) -> dict[int, str]:
    codecs: dict[int, str] = {}
    for attribute in media.attributes:
        if attribute.startswith("rtpmap:"):
            pt, _, encoding = attribute[len("rtpmap:") :].partition(" ")
            if pt.isdigit():
                codecs[int(pt)] = encoding.split("/")[0]
    return codecs


def check_offer(
    sdp: str, *, direction: Direction, max_bytes: int = 65536, max_media: int = 4
) -> OfferSummary:
    """Check that ``sdp`` is an offer Hark can answer; raise a HarkError that says why not."""
    size = len(sdp.encode())
    if size > max_bytes:
        raise OfferTooLarge(f"SDP offer is {size} bytes; the limit is {max_bytes}")
    session, media = _parse_offer(sdp)
    if len(media) > max_media:
        raise UnsupportedOffer(f"offer has {len(media)} m-lines; at most {max_media} are accepted")
    audio = next((m for m in media if m.kind == "audio" and m.port != 0), None)
    if audio is None:
        raise UnsupportedOffer("offer has no audio m-line")
    codecs = _codecs(audio)
    opus = [pt for pt, name in codecs.items() if name.lower() == "opus"]
    if not opus:
        offered = ", ".join(sorted(set(codecs.values()))) or "none"
        raise UnsupportedOffer(f"offer's audio has no Opus codec; offered: {offered}")
    audio_direction = _direction(audio.attributes, _direction(session, "sendrecv"))
    allowed = _CAN_SEND if direction == "publish" else _CAN_RECEIVE
    if audio_direction not in allowed:
        need = " or ".join(allowed)
        raise UnsupportedOffer(f"offer's audio is {audio_direction}; a {direction} needs {need}")
    ice_ufrag = _attribute(audio.attributes, "ice-ufrag") or _attribute(session, "ice-ufrag")
    ice_pwd = _attribute(audio.attributes, "ice-pwd") or _attribute(session, "ice-pwd")
    if not ice_ufrag or not ice_pwd:
        raise InvalidOffer("offer's audio has no a=ice-ufrag and a=ice-pwd (ICE is required)")
    _check_dtls(audio.attributes, session)
    return OfferSummary(
        audio_mid=_attribute(audio.attributes, "mid"),
        ice_ufrag=ice_ufrag,
        ice_pwd=ice_pwd,
        opus_payload_type=opus[0],
        audio_direction=audio_direction,
        media_count=len(media),
        has_video=any(m.kind == "video" and m.port != 0 for m in media),
    )


def _check_dtls(media: list[str], session: list[str]) -> None:
    """DTLS-SRTP needs a well-formed fingerprint and setup role (RFC 8122, RFC 5763)."""
    fingerprint = _attribute(media, "fingerprint") or _attribute(session, "fingerprint")
    if fingerprint is None:
        raise InvalidOffer("offer has no a=fingerprint (DTLS-SRTP is required)")
    algorithm, _, digest = fingerprint.partition(" ")
    size = _FINGERPRINT_BYTES.get(algorithm.lower())
    octets = digest.strip().split(":")
    if (
        size is None
        or len(octets) != size
        or not all(len(o) == 2 and all(c in "0123456789abcdefABCDEF" for c in o) for o in octets)
    ):
        raise InvalidOffer(f"a=fingerprint is malformed: {_short(fingerprint)!r}")
    setup = _attribute(media, "setup") or _attribute(session, "setup")
    if setup not in _SETUP_ROLES:
        raise InvalidOffer(f"a=setup must be actpass, active or passive, got {setup!r}")


def _check_candidate(number: int, value: str) -> None:
    fields = value[len("candidate:") :].split()
    if len(fields) < 8 or fields[6] != "typ":
        raise InvalidTrickle(
            f"line {number}: a candidate needs foundation, component, transport, priority, "
            f"address, port, 'typ' and a type: {_short(value)!r}"
        )
    component, priority, port = fields[1], fields[3], fields[5]
    if not (component.isdigit() and priority.isdigit() and port.isdigit()):
        raise InvalidTrickle(f"line {number}: component, priority and port must be numbers")
    if not 0 <= int(port) <= 65535:
        raise InvalidTrickle(f"line {number}: port {port} is out of range")


def parse_trickle_fragment(body: str) -> TrickleFragment:
    """Parse an ``application/trickle-ice-sdpfrag`` body (RFC 8840 section 4.4)."""
    lines = _lines(body)
    if not lines:
        raise InvalidTrickle("trickle fragment is empty")
    ufrag = pwd = None
    mid: str | None = None
    mline_index = -1
    candidates: list[TrickleCandidate] = []
    end = False
    for number, line in lines:
        kind = _split(number, line, InvalidTrickle)
        value = line[2:]
        if kind == "m":
            mline_index += 1
            mid = None
        elif kind == "a":
            name, _, rest = value.partition(":")
            if name == "ice-ufrag":
                ufrag = rest.strip()
            elif name == "ice-pwd":
                pwd = rest.strip()
            elif name == "mid":
                mid = rest.strip()
            elif name == "candidate":
                _check_candidate(number, value)
                candidates.append(TrickleCandidate(mid, max(mline_index, 0), value))
            elif name == "end-of-candidates":
                end = True
    return TrickleFragment(ufrag, pwd, tuple(candidates), end)


def is_ice_restart(fragment: TrickleFragment, current_ufrag: str, current_pwd: str | None) -> bool:
    """True when the fragment carries ICE credentials other than the current ones."""
    if fragment.ice_ufrag is not None and fragment.ice_ufrag != current_ufrag:
        return True
    return (
        fragment.ice_pwd is not None and current_pwd is not None and fragment.ice_pwd != current_pwd
    )
