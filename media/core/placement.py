"""Where a new session goes: the least-loaded node with room, this node first while it has room.

Pure: the nodes' loads in, a node id out. The loads come from the Redis directory (other nodes,
refreshed every second) and from this node's own admission state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """What placement needs to know about one node."""

    node: str
    serving: bool
    """SERVING (False: DRAINING, or a node that cannot take sessions for another reason)."""
    sessions: int
    capacity: int
    overloaded: bool = False

    @property
    def has_room(self) -> bool:
        return self.serving and not self.overloaded and self.sessions < self.capacity

    @property
    def fill(self) -> float:
        """The share of its capacity in use (what "least loaded" compares)."""
        return self.sessions / self.capacity if self.capacity > 0 else 1.0


def choose_node(local: NodeLoad, others: Iterable[NodeLoad]) -> str | None:
    """The node a new session should live on: ``local`` while it has room, else the other node
    with room whose capacity is least used (ties: fewer sessions, then the smaller id); ``None``
    when no node has room."""
    if local.has_room:
        return local.node
    candidates = [node for node in others if node.has_room and node.node != local.node]
    if not candidates:
        return None
    return min(candidates, key=lambda node: (node.fill, node.sessions, node.node)).node
