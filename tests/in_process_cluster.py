"""Several real Hark servers in this process, each routing to the others by member name.

The router is test wiring (what the workers' router and the Redis directory provide in
production). A member is named ``"b"`` (node b's only worker) or ``"a/1"`` (worker 1 of node a);
an id naming a member is ``Elsewhere`` at that member's addresses (which a test may change, e.g.
to a relay), a lost member's ids are ``Lost``, any other owner ``Unknown``. Sibling workers are
reached directly, another node through its worker 0 (as through its public address).
``tests.tcp_proxy`` stands between two members when a test needs to break their connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from media.app import HarkApp
from media.cluster.routing import Elsewhere, Here, Lost, Route, Unknown
from media.core.session_ids import Owner, owner_of
from tests.support import server_config

CLUSTER_SECRET = "in-process cluster secret, shared by every member"


@dataclasses.dataclass
class Member:
    """A member as the test routers know it: its addresses, and whether it is lost."""

    grpc_target: str
    base_url: str
    lost: bool = False


def owner_named(name: str) -> Owner:
    """``"b"``: node b's only worker; ``"a/1"``: worker 1 of node a."""
    node, _, worker = name.partition("/")
    return Owner(node, int(worker or 0))


@dataclasses.dataclass
class Members:
    """The in-process apps by member name, and the addresses every member's router reads."""

    apps: dict[str, HarkApp] = dataclasses.field(default_factory=dict)
    addresses: dict[str, Member] = dataclasses.field(default_factory=dict)

    def __getitem__(self, name: str) -> HarkApp:
        return self.apps[name]

    def lose(self, name: str) -> None:
        """Member ``name`` (in this process or not) is lost: its sessions route ``Lost``."""
        self.addresses.setdefault(name, Member("127.0.0.1:1", "http://127.0.0.1:1")).lost = True


class MeshRouter:
    """``members`` by name, shared by every member's router (a test may add or change one)."""

    def __init__(self, me: Owner, members: dict[str, Member], *, scoped: bool = True) -> None:
        self.me = me
        self.members = members
        self.scoped = scoped  # False: lists the other nodes at every scope (loop-prone)

    def _elsewhere(self, owner: Owner) -> Elsewhere | Lost | None:
        for name, member in self.members.items():
            if owner_named(name) == owner:
                if member.lost:
                    return Lost(owner)
                return Elsewhere(owner, member.grpc_target, member.base_url)
        return None

    def route(self, session_id: str) -> Route:
        owner = owner_of(session_id)
        if owner == self.me:
            return Here()
        found = self._elsewhere(owner) if owner is not None else None
        return Unknown() if found is None else found

    def others(self, scope: str) -> list[Elsewhere]:
        if scope == "worker":
            return []
        owners = {owner_named(name) for name in self.members} - {self.me}
        siblings = [o for o in owners if o.node == self.me.node]
        nodes = [o for o in owners if o.node != self.me.node and o.worker == 0]
        listed = siblings if scope == "node" and self.scoped else siblings + nodes
        found = [self._elsewhere(owner) for owner in sorted(listed, key=str)]
        return [where for where in found if isinstance(where, Elsewhere)]

    def place(self) -> Here | Elsewhere:
        return Here()

    def lost(self) -> dict[str, Owner]:
        return {}


@contextlib.asynccontextmanager
async def in_process_cluster(
    *names: str,
    configs: dict[str, dict[str, Any]] | None = None,
    scoped: bool = True,
    **overrides: Any,
) -> AsyncIterator[Members]:
    """Members named ``names``, configured with ``overrides`` and their own ``configs[name]``."""
    members = Members()
    async with contextlib.AsyncExitStack() as stack:
        for name in names:
            owner = owner_named(name)
            own = (configs or {}).get(name, {})
            settings = {"cluster_secret": CLUSTER_SECRET, **overrides, **own}
            app = HarkApp(server_config(node_id=owner.node, **settings))
            app.sessions.owner = owner  # test wiring: what --workers does for worker k
            app.router = MeshRouter(owner, members.addresses, scoped=scoped)
            await app.start()
            stack.push_async_callback(app.stop)
            members.apps[name] = app
            members.addresses[name] = Member(app.grpc_target, app.base_url)
        yield members
