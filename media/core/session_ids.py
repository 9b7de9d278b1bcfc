"""Session ids that name their owner: ``{node}.{worker}.{random}``.

Any worker of any node can tell from the id alone which process holds the session, so a request
reaching another one is forwarded without a lookup. The node part is a DNS label (no dots), the
worker a decimal index, the rest 144 random bits (URL-safe base64, no dots).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

MAX_WORKERS = 256

_SESSION_ID = re.compile(
    r"(?P<node>[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)"
    r"\.(?P<worker>0|[1-9][0-9]{0,2})"
    r"\.[A-Za-z0-9_-]{16,64}"
)


@dataclass(frozen=True, slots=True)
class Owner:
    """The process that holds a session: worker ``worker`` of node ``node``."""

    node: str
    worker: int = 0

    def new_session_id(self) -> str:
        return f"{self.node}.{self.worker}.{secrets.token_urlsafe(18)}"

    def __str__(self) -> str:
        return f"{self.node}/{self.worker}"


def owner_of(session_id: str) -> Owner | None:
    """The owner named by ``session_id``, or ``None`` when it is not a Hark session id."""
    match = _SESSION_ID.fullmatch(session_id)
    if match is None:
        return None
    worker = int(match.group("worker"))
    if worker >= MAX_WORKERS:
        return None
    return Owner(match.group("node"), worker)
