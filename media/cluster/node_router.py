"""The Router of a node in a Redis cluster: other nodes' sessions are forwarded to the node the
id names, a departed node's are ``Lost``, and new sessions go where placement says."""

from __future__ import annotations

from collections.abc import Callable

from media.cluster.directory import NodeDirectory
from media.cluster.routing import Elsewhere, Here, Lost, Route, Unknown
from media.core.placement import NodeLoad, choose_node
from media.core.session_ids import Owner, owner_of


class NodeRouter:
    """Routes by the node an id names, from what the directory last read (never waiting on Redis).

    Ids of this node are ``Here`` when they name this process (``owner``); another worker of this
    node is the workers' router's business (it delegates other nodes here), so they are
    ``Unknown`` to this one. ``local_load`` is this node's own admission state, as of now.
    """

    def __init__(
        self, directory: NodeDirectory, owner: Owner, local_load: Callable[[], NodeLoad]
    ) -> None:
        self.directory = directory
        self.owner = owner
        self._local_load = local_load

    def route(self, session_id: str) -> Route:
        owner = owner_of(session_id)
        if owner is None:
            return Unknown()
        if self.directory.is_lost(session_id):
            return Lost(owner)
        if owner.node == self.owner.node:
            return Here() if owner == self.owner else Unknown()
        record = self.directory.node(owner.node)
        if record is None or owner.worker >= record.workers:
            return Unknown()  # no such node, or no such worker of it: nothing to forward to
        return Elsewhere(owner, record.grpc_address, record.public_url)

    def others(self, scope: str) -> list[Elsewhere]:
        if scope != "cluster":
            return []
        return [
            Elsewhere(Owner(record.id), record.grpc_address, record.public_url)
            for record in self.directory.nodes().values()
        ]

    def lost(self) -> dict[str, Owner]:
        ids = self.directory.lost_ids()
        return {sid: owner for sid in ids if (owner := owner_of(sid)) is not None}

    def place(self) -> Here | Elsewhere:
        """The least-loaded node with room, this one while it has room; ``Here`` when no node
        has room (local admission then refuses, naming this node's limit)."""
        nodes = self.directory.nodes()
        chosen = choose_node(self._local_load(), (record.load() for record in nodes.values()))
        record = nodes.get(chosen) if chosen is not None else None
        if record is None:
            return Here()
        return Elsewhere(Owner(record.id), record.grpc_address, record.public_url)
