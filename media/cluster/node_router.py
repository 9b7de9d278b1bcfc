"""The Router of a node in a Redis cluster: other nodes' sessions are forwarded to the node the
id names, a departed member's are ``Lost``, and new sessions go where placement says."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from media.cluster.directory import NodeDirectory, NodeRecord
from media.cluster.routing import Elsewhere, Here, Lost, Route, Unknown
from media.core.placement import NodeLoad, choose_node
from media.core.session_ids import Owner, owner_of


class NodeRouter:
    """Routes by the node an id names, from what the directory last read (never waiting on Redis).

    Another node is reached at its public addresses, whichever of its workers holds the session:
    the worker that answers there forwards to its sibling. Ids of this node are ``Here`` when they
    name this process (``owner``); another worker of this node is the workers' router's business
    (it delegates other nodes here), so they are ``Unknown`` to this one. ``local_load`` is this
    process's own admission state, as of now.
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
        return _at(record, owner)

    def others(self, scope: str) -> list[Elsewhere]:
        """One entry per other node (its public addresses: it covers its own workers)."""
        if scope != "cluster":
            return []
        return [_at(record, Owner(record.id)) for record in self._other_nodes().values()]

    def lost(self) -> dict[str, Owner]:
        ids = self.directory.lost_ids()
        return {sid: owner for sid in ids if (owner := owner_of(sid)) is not None}

    def place(self) -> Here | Elsewhere:
        """The least-loaded node with room, this one while it has room; ``Here`` when no node
        has room (local admission then refuses, naming this node's limit)."""
        nodes = self._other_nodes()
        loads = (node_load(members) for members in _by_node(self.directory.nodes()).values())
        chosen = choose_node(self._local_load(), loads)
        record = nodes.get(chosen) if chosen is not None else None
        if record is None:
            return Here()
        return _at(record, Owner(record.id))

    def _other_nodes(self) -> dict[str, NodeRecord]:
        """A live record of each other node (any worker's: they share the node's addresses)."""
        records = self.directory.nodes().values()
        return {record.id: record for record in records if record.id != self.owner.node}


def _at(record: NodeRecord, owner: Owner) -> Elsewhere:
    return Elsewhere(owner, record.grpc_address, record.public_url)


def _by_node(records: dict[str, NodeRecord]) -> dict[str, list[NodeRecord]]:
    nodes: dict[str, list[NodeRecord]] = {}
    for record in records.values():
        nodes.setdefault(record.id, []).append(record)
    return nodes


def node_load(members: Iterable[NodeRecord]) -> NodeLoad:
    """A node's load as placement compares it: the sum over its workers that take sessions (a
    draining or overloaded worker adds neither sessions nor room)."""
    records = list(members)
    taking = [record for record in records if record.load().serving and not record.overloaded]
    return NodeLoad(
        records[0].id,
        serving=bool(taking),
        sessions=sum(record.sessions for record in taking),
        capacity=sum(record.capacity for record in taking),
    )
