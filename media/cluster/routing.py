"""Where a session-scoped request goes: answered here, forwarded to its owner, or refused.

The owner is read from the session id (``media.core.session_ids``), never from anything the
client says about addresses: an id naming an unknown node or worker is ``Unknown`` (NOT_FOUND /
404), never a forward to an arbitrary address.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from media.core.session_ids import Owner, owner_of


@dataclass(frozen=True, slots=True)
class Here:
    """This process owns the session (or would, had it one by that id)."""


@dataclass(frozen=True, slots=True)
class Elsewhere:
    """Another process owns it: forward there.

    ``grpc_target`` is a grpc channel target (``unix:/run/...`` for a sibling worker,
    ``HOST:PORT`` for another node); ``http_base`` an absolute base URL, with ``http_socket`` the
    Unix socket to reach it through when set (a sibling worker's private HTTP listener).
    """

    owner: Owner
    grpc_target: str
    http_base: str
    http_socket: str | None = None


@dataclass(frozen=True, slots=True)
class Lost:
    """The owner's node left the cluster; the session closed with ``NODE_LOST``."""

    owner: Owner


@dataclass(frozen=True, slots=True)
class Unknown:
    """No such owner: the id is malformed or names a node/worker that does not exist."""


Route = Here | Elsewhere | Lost | Unknown


class Router(Protocol):
    """Where requests go. One per process, built by the composition root.

    ``route`` answers for one session id; ``others`` lists the processes a whole-cluster request
    (``ListSessions``, ``WatchSessions``) fans out to, at the given scope: ``"cluster"`` (every
    other node and every sibling worker), ``"node"`` (sibling workers only) or ``"worker"`` (none).
    ``place`` picks the process a new session should live on: ``Here()`` while this one has room.
    ``lost`` lists the sessions still retained of owners that left the cluster, each with its
    owner (what a watcher connecting after their loss is told of).
    """

    def route(self, session_id: str) -> Route: ...

    def others(self, scope: str) -> list[Elsewhere]: ...

    def place(self) -> Here | Elsewhere: ...

    def lost(self) -> dict[str, Owner]: ...


class SingleProcessRouter:
    """One worker, no cluster: ids this process minted are here, any other id is unknown."""

    def __init__(self, owner: Owner) -> None:
        self.owner = owner

    def route(self, session_id: str) -> Route:
        return Here() if owner_of(session_id) == self.owner else Unknown()

    def others(self, scope: str) -> list[Elsewhere]:
        return []

    def place(self) -> Here | Elsewhere:
        return Here()

    def lost(self) -> dict[str, Owner]:
        return {}
