"""Pure checks of trickle-ICE fragments (``application/trickle-ice-sdpfrag``, RFC 8840) and of the
ICE candidate lines in them and in offers (RFC 8839): text in, facts or a HarkError out."""

from __future__ import annotations

from dataclasses import dataclass

from media.core.sdp_lines import ascii_int, numbered_lines, quote, split_typed_line
from media.errors import InvalidOffer, InvalidTrickle


@dataclass(frozen=True, slots=True)
class TrickleCandidate:
    mid: str | None
    mline_index: int
    candidate: str  # the attribute without "a=": "candidate:<foundation> <component> ..."


@dataclass(frozen=True, slots=True)
class TrickleFragment:
    ice_ufrag: str | None
    ice_pwd: str | None
    candidates: tuple[TrickleCandidate, ...]
    end_of_candidates: bool


def is_mdns_candidate(candidate: str) -> bool:
    """True for a candidate whose address is an mDNS name (e.g. ``<uuid>.local``)."""
    fields = candidate.split()
    return len(fields) > 4 and fields[4].lower().endswith(".local")


def check_candidate(
    number: int, value: str, error: type[InvalidOffer | InvalidTrickle] = InvalidTrickle
) -> None:
    """RFC 8839 section 5.1: the eight mandatory fields, with numbers where numbers belong."""
    fields = value[len("candidate:") :].split()
    if len(fields) < 8 or fields[6] != "typ":
        raise error(
            f"line {number}: a candidate needs foundation, component, transport, priority, "
            f"address, port, 'typ' and a type: {quote('a=' + value)}"
        )
    component, priority, port = (ascii_int(fields[i]) for i in (1, 3, 5))
    if component is None or priority is None or port is None:
        raise error(
            f"line {number}: a candidate's component, priority and port must be numbers: "
            f"{quote('a=' + value)}"
        )
    extensions = dict(zip(fields[8::2], fields[9::2], strict=False))
    if ascii_int(extensions.get("rport", "0")) is None:
        raise error(f"line {number}: a candidate's rport must be a number: {quote('a=' + value)}")
    if port > 65535:
        raise error(f"line {number}: candidate port {port} is out of range (0-65535)")


def parse_trickle_fragment(body: str) -> TrickleFragment:
    """Parse an ``application/trickle-ice-sdpfrag`` body (RFC 8840 section 4.4).

    Candidates before any m= line are taken to belong to the first m-line (some clients send
    them that way). Raises ``InvalidTrickle`` naming the line that is wrong.
    """
    lines = numbered_lines(body)
    if not lines:
        raise InvalidTrickle("trickle fragment is empty")
    ufrag: str | None = None
    pwd: str | None = None
    mid: str | None = None
    mline_index = -1
    candidates: list[TrickleCandidate] = []
    end_of_candidates = False
    for number, line in lines:
        kind, value = split_typed_line(number, line, InvalidTrickle)
        if kind == "m":
            mline_index += 1
            mid = None
        elif kind == "a":
            name, _, rest = value.partition(":")
            if name in ("ice-ufrag", "ice-pwd") and not rest.strip():
                raise InvalidTrickle(f"line {number}: a={name} has no value")
            if name == "ice-ufrag":
                ufrag = rest.strip()
            elif name == "ice-pwd":
                pwd = rest.strip()
            elif name == "mid":
                mid = rest.strip() or None
            elif name == "candidate":
                check_candidate(number, value)
                candidates.append(TrickleCandidate(mid, max(mline_index, 0), value))
            elif name == "end-of-candidates":
                end_of_candidates = True
    return TrickleFragment(ufrag, pwd, tuple(candidates), end_of_candidates)


def is_ice_restart(fragment: TrickleFragment, current_ufrag: str, current_pwd: str | None) -> bool:
    """True when the fragment carries ICE credentials other than the current ones (RFC 8840)."""
    if fragment.ice_ufrag is not None and fragment.ice_ufrag != current_ufrag:
        return True
    return (
        fragment.ice_pwd is not None and current_pwd is not None and fragment.ice_pwd != current_pwd
    )
