"""One worker of ``hark serve --workers N``: who it is, where its siblings listen, and how a
request for a sibling's session is routed.

The supervisor (``media.cluster.supervisor``) starts each worker as ``python -m media serve ...``
with ``HARK_WORKER_INDEX`` and ``HARK_RUN_DIR`` in its environment. Worker ``k`` shares the public
HTTP and gRPC ports with its siblings (``SO_REUSEPORT``) and also listens privately on
``{run_dir}/w{k}.http.sock`` and ``{run_dir}/w{k}.grpc.sock``, where siblings forward to it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pathlib
import signal
import sys
from collections.abc import Callable, Mapping

import grpc

from media.cluster.journal import SessionJournal, read_journal
from media.cluster.node_metrics import node_exposition, wants_one_worker
from media.cluster.routing import Elsewhere, Here, Route, Router, SingleProcessRouter, Unknown
from media.config import Config, ConfigError
from media.core.events import CloseReason
from media.core.session_ids import Owner, owner_of
from media.server.session_table import SessionTable

logger = logging.getLogger(__name__)

INDEX_ENV = "HARK_WORKER_INDEX"
RUN_DIR_ENV = "HARK_RUN_DIR"


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Worker ``index`` of ``count``, sharing the run directory ``run_dir`` with its siblings."""

    index: int
    count: int
    run_dir: pathlib.Path

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ConfigError(f"{INDEX_ENV}={self.index} is not a worker of {self.count}")

    @classmethod
    def from_env(cls, config: Config, env: Mapping[str, str] = os.environ) -> WorkerSpec | None:
        """This process's place among the workers, or ``None`` when it was not started as one."""
        index = env.get(INDEX_ENV)
        run_dir = env.get(RUN_DIR_ENV)
        if index is None or run_dir is None:
            return None
        if not index.isdigit():
            raise ConfigError(f"{INDEX_ENV}={index!r} is not a worker index")
        return cls(int(index), config.effective_workers, pathlib.Path(run_dir))

    def http_socket(self, index: int, what: str = "HTTP") -> pathlib.Path:
        """Worker ``index``'s private socket for its HTTP app (``what`` "HTTP"), or for its
        ``--metrics-port`` app (``what`` "metrics")."""
        return self.run_dir / f"w{index}.{what.lower()}.sock"

    def grpc_socket(self, index: int) -> pathlib.Path:
        return self.run_dir / f"w{index}.grpc.sock"

    def grpc_target(self, index: int) -> str:
        return f"unix:{self.grpc_socket(index)}"

    @property
    def journal_path(self) -> pathlib.Path:
        return self.run_dir / f"w{self.index}.sessions"

    @property
    def siblings(self) -> list[int]:
        return [k for k in range(self.count) if k != self.index]

    def config_for(self, config: Config) -> Config:
        """The worker's own config: worker k takes UDP port ``--udp-port + k``."""
        if config.udp_port is None:
            return config
        return dataclasses.replace(config, udp_port=config.udp_port + self.index)


class WorkerRouter:
    """Routes by the worker named in the session id: this worker's ids are here, a sibling's
    are forwarded to its private sockets, and a worker index past the count is unknown. Ids of
    other nodes go to ``nodes`` (the cluster's router) when there is one, else are unknown."""

    def __init__(
        self,
        spec: WorkerSpec,
        owner: Owner,
        http_base: Callable[[], str],
        nodes: Router | None = None,
    ) -> None:
        self.spec = spec
        self.owner = owner
        self._http_base = http_base
        self._nodes = nodes

    def route(self, session_id: str) -> Route:
        owner = owner_of(session_id)
        if owner is None:
            return Unknown()
        if owner.node != self.owner.node:
            return self._nodes.route(session_id) if self._nodes is not None else Unknown()
        if owner.worker == self.owner.worker:
            return Here()
        if owner.worker < self.spec.count:
            return self.sibling(owner.worker)
        return Unknown()

    def sibling(self, index: int) -> Elsewhere:
        return Elsewhere(
            owner=Owner(self.owner.node, index),
            grpc_target=self.spec.grpc_target(index),
            http_base=self._http_base(),
            http_socket=str(self.spec.http_socket(index)),
        )

    def others(self, scope: str) -> list[Elsewhere]:
        if scope == "worker":
            return []
        siblings = [self.sibling(k) for k in self.spec.siblings]
        if scope == "cluster" and self._nodes is not None:
            return siblings + self._nodes.others("cluster")
        return siblings

    def place(self) -> Here | Elsewhere:
        """Here while this worker has room, else where the cluster's router places it."""
        return self._nodes.place() if self._nodes is not None else Here()

    def lost(self) -> dict[str, Owner]:
        return self._nodes.lost() if self._nodes is not None else {}


class SingleProcess:
    """The role of a server that is the only process of its node (no ``--workers``)."""

    shares_ports = False
    grpc_options = (("grpc.so_reuseport", 0),)
    title = ""  # what the startup log calls this process, after "hark "

    def __init__(self, sessions: SessionTable, nodes: Router | None = None) -> None:
        self.router: Router = nodes or SingleProcessRouter(sessions.owner)

    async def metrics(self, own: bytes, headers: Mapping[str, str]) -> bytes:
        return own

    def take_over(self) -> None:
        pass

    async def listen_privately(
        self, http: Callable[[], asyncio.Protocol], what: str
    ) -> list[asyncio.Server]:
        return []

    def add_private_grpc_port(self, server: grpc.aio.Server) -> None:
        pass

    async def serving(self) -> None:
        pass

    def close(self) -> None:
        pass


class Worker(SingleProcess):
    """The role of worker ``spec.index``: ports shared with its siblings, private sockets they
    forward to, the journal its successor answers from, metrics covering every worker, and its
    parent watched (the worker drains, as on SIGTERM, when the supervisor is gone)."""

    shares_ports = True
    grpc_options = (("grpc.so_reuseport", 1),)

    def __init__(
        self,
        spec: WorkerSpec,
        sessions: SessionTable,
        base_url: Callable[[], str],
        nodes: Router | None = None,
    ):
        self.spec = spec
        self.title = f"worker {spec.index} of {spec.count} "
        self.sessions = sessions
        self.router = WorkerRouter(spec, sessions.owner, base_url, nodes=nodes)
        self._journal: SessionJournal | None = None
        self._parent: asyncio.ReadTransport | None = None
        self._metrics_from = "HTTP"  # the app /metrics is on

    async def metrics(self, own: bytes, headers: Mapping[str, str]) -> bytes:
        if wants_one_worker(headers):
            return own
        siblings = {k: self.spec.http_socket(k, self._metrics_from) for k in self.spec.siblings}
        return await node_exposition(self.spec.index, own, siblings)

    def take_over(self) -> None:
        self._journal = take_over_journal(self.spec, self.sessions)

    async def listen_privately(
        self, http: Callable[[], asyncio.Protocol], what: str
    ) -> list[asyncio.Server]:
        if what == "metrics":
            self._metrics_from = what
        path = self.spec.http_socket(self.spec.index, what)
        path.unlink(missing_ok=True)  # the socket of the worker this one replaces
        return [await asyncio.get_running_loop().create_unix_server(http, str(path))]

    def add_private_grpc_port(self, server: grpc.aio.Server) -> None:
        self.spec.grpc_socket(self.spec.index).unlink(missing_ok=True)
        server.add_insecure_port(self.spec.grpc_target(self.spec.index))

    async def serving(self) -> None:
        """Tell the supervisor (one line on stdout), then watch its end of stdin."""
        loop = asyncio.get_running_loop()
        self._parent, _ = await loop.connect_read_pipe(_ParentGone, sys.stdin)
        print("serving", flush=True)
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # nobody reads that pipe any more

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
        if self._parent is not None:
            self._parent.close()
            self._parent = None


class _ParentGone(asyncio.Protocol):
    """stdin is a pipe from the supervisor: its end closes when the supervisor dies."""

    def eof_received(self) -> bool:
        logger.warning("the supervisor is gone: draining")
        os.kill(os.getpid(), signal.SIGTERM)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        pass


def process_role(
    spec: WorkerSpec | None,
    sessions: SessionTable,
    base_url: Callable[[], str],
    nodes: Router | None = None,
) -> SingleProcess:
    """This process's role; ``nodes`` routes to the other nodes of a cluster (``--redis-url``)."""
    if spec is None:
        return SingleProcess(sessions, nodes)
    return Worker(spec, sessions, base_url, nodes)


def take_over_journal(spec: WorkerSpec, sessions: SessionTable) -> SessionJournal:
    """Answer for the sessions of the worker this one replaces (the ones still open then as
    ``CLOSED(NODE_LOST)``), then journal this worker's own."""
    lost = 0
    for entry in read_journal(spec.journal_path):
        if entry.closed is None:
            detail = f"worker {spec.index} of node {sessions.owner.node} died and was restarted"
            sessions.restore_closed(entry.session_id, entry.origin, CloseReason.NODE_LOST, detail)
            lost += 1
        else:
            detail = "closed before its worker was restarted"
            sessions.restore_closed(entry.session_id, entry.origin, entry.closed, detail)
    if lost:
        logger.warning("worker %d restarted: %d sessions were lost with it", spec.index, lost)
    journal = SessionJournal(spec.journal_path, lambda: (live.session for live in sessions.all()))
    journal.rewrite()
    sessions.observers.append(journal.record)
    return journal
