"""Host candidates as Hark announces them, built with aioice's public API, and the mark that
tells Hark's own ICE gathering from other peer connections of the process."""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
from collections.abc import Iterator, Sequence

from aioice import Candidate
from aioice.candidate import candidate_foundation, candidate_priority

HARK_GATHERING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "hark_gathering", default=False
)


@contextlib.contextmanager
def hark_gathering() -> Iterator[None]:
    """Mark the ICE gathering done inside as Hark's own (what ``install_ice_plan`` applies to);
    other peer connections of the process (a client in a test) gather as aiortc does."""
    token = HARK_GATHERING.set(True)
    try:
        yield
    finally:
        HARK_GATHERING.reset(token)


def host_candidate(component: int, address: str, port: int, rank: int = 0) -> Candidate:
    return Candidate(
        foundation=candidate_foundation("host", "udp", address),
        component=component,
        transport="udp",
        priority=candidate_priority(component, "host", 65535 - rank),
        host=address,
        port=port,
        type="host",
    )


def announce(candidates: Sequence[Candidate], public: Sequence[str]) -> list[Candidate]:
    """``candidates`` with the public address of their family in host candidates; on a shared
    port, the local addresses of a family then make one candidate."""
    kept: dict[tuple[str, int, int, str], Candidate] = {}
    for candidate in candidates:
        if candidate.type == "host":
            family = ipaddress.ip_address(candidate.host).version
            announced = [a for a in public if ipaddress.ip_address(a).version == family]
            candidate.host = announced[0] if announced else candidate.host
        key = (candidate.host, candidate.port, candidate.component, candidate.type)
        kept.setdefault(key, candidate)
    return list(kept.values())
