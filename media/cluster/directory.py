"""The cluster's membership in Redis: this process's record and session ids, every other one's.

A member of the directory is one process that holds sessions: a node run as one process is the
member ``{id}``; worker ``k`` of a node run with ``--workers N`` (N > 1) is the member
``{id}.{k}``, the prefix of the ids of the sessions it holds (``member_name``). Each member
writes only its own keys, so the workers of one node never overwrite each other.

Keys (plain, inspectable with ``redis-cli``; the README's "Redis keys" table documents them):

- ``hark:nodes``: SET of the members of the cluster.
- ``hark:node:{member}``: HASH, the member's record (``NodeRecord``: ``id`` is its node,
  ``worker`` its index), rewritten every second and expiring ``--node-ttl`` seconds after its
  last write: a member whose record expired is gone.
- ``hark:node:{member}:sessions``: SET of the ids of the sessions the member holds (open, or
  closed and still retained), added when a session is created and removed when its retention ends.
- ``hark:node:{member}:lost``: STRING, set (NX) by the one survivor that declares the member
  lost; it then gives the member's session set the retention period to live.

Every member writes its own keys and reads the others' once a second (and at once when it
creates a session or starts draining); nothing per packet or frame touches Redis. What it read
is kept in memory, so routing a request never waits on Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from media.aio import cancel_and_wait
from media.core.placement import NodeLoad

logger = logging.getLogger(__name__)

NODES_KEY: Final = "hark:nodes"
BEAT_S: Final = 1.0
SERVING: Final = "SERVING"
DRAINING: Final = "DRAINING"


def member_name(node: str, worker: int, workers: int) -> str:
    """The directory's name for worker ``worker`` of a node run with ``workers`` processes."""
    return node if workers == 1 else f"{node}.{worker}"


def node_key(node: str) -> str:
    return f"hark:node:{node}"


def sessions_key(node: str) -> str:
    return f"hark:node:{node}:sessions"


def lost_key(node: str) -> str:
    return f"hark:node:{node}:lost"


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One member as the others see it (the fields of its ``hark:node:{member}`` hash)."""

    id: str
    """The node's id (``--node-id``)."""
    public_url: str
    grpc_address: str
    state: str
    sessions: int
    capacity: int
    cpu: float
    """Percent of one core this node's process used since its previous record."""
    loop_lag_ms: float
    overloaded: bool
    workers: int
    updated: float
    """Unix time of this write."""
    started: float
    """Unix time this node's process joined: a new value is a new incarnation."""
    worker: int = 0
    """The member's worker index on its node (0 for a node run as one process)."""

    @property
    def member(self) -> str:
        return member_name(self.id, self.worker, self.workers)

    def fields(self) -> dict[str, str]:
        return {
            name: str(int(value)) if isinstance(value, bool) else str(value)
            for name, value in asdict(self).items()
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> NodeRecord | None:
        """The record a hash holds; ``None`` when it is missing or not one Hark wrote."""
        try:
            return cls(
                id=fields["id"],
                public_url=fields["public_url"],
                grpc_address=fields["grpc_address"],
                state=fields["state"],
                sessions=int(fields["sessions"]),
                capacity=int(fields["capacity"]),
                cpu=float(fields["cpu"]),
                loop_lag_ms=float(fields["loop_lag_ms"]),
                overloaded=fields["overloaded"] == "1",
                workers=int(fields["workers"]),
                updated=float(fields["updated"]),
                started=float(fields["started"]),
                worker=int(fields.get("worker", "0")),
            )
        except (KeyError, ValueError):
            return None

    def load(self) -> NodeLoad:
        return NodeLoad(
            self.id, self.state == SERVING, self.sessions, self.capacity, self.overloaded
        )


class CpuMeter:
    """This process's CPU use between two readings, in percent of one core."""

    def __init__(self) -> None:
        self._wall = time.monotonic()
        self._cpu = time.process_time()

    def read(self) -> float:
        wall, cpu = time.monotonic(), time.process_time()
        elapsed = wall - self._wall
        used = (cpu - self._cpu) / elapsed * 100 if elapsed > 0 else 0.0
        self._wall, self._cpu = wall, cpu
        return round(used, 1)


class NodeDirectory:
    """This member's membership: writes its record and session ids, reads the other members',
    and learns which sessions were lost with a member that left without a word.

    ``member`` is this process's name in the directory (``member_name``); ``describe`` gives its
    record as of now; ``session_ids`` the ids of the sessions it holds. ``on_change`` is called
    when ``detached`` flips.
    """

    def __init__(
        self,
        redis_url: str,
        member: str,
        *,
        ttl: float,
        retention: float,
        describe: Callable[[], NodeRecord],
        session_ids: Callable[[], Collection[str]],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.member = member
        self.ttl = ttl
        self.retention = retention
        self._describe = describe
        self._session_ids = session_ids
        self._on_change = on_change
        self._redis: Redis = Redis.from_url(
            redis_url,
            decode_responses=True,
            socket_timeout=min(ttl / 2, 2.0),
            socket_connect_timeout=min(ttl / 2, 2.0),
            retry=Retry(NoBackoff(), 0),
        )
        self._nodes: dict[str, NodeRecord] = {}
        self._lost: dict[str, float] = {}
        self._gone: dict[str, float] = {}
        self._published: set[str] | None = None
        self._joined = False
        self._unreachable_since: float | None = None
        self._back_at: float | None = None
        self._was_detached = False
        self._wake = asyncio.Event()
        self._awaiting: dict[str, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None

    # what the router and placement read

    def nodes(self) -> dict[str, NodeRecord]:
        """The other members whose record was live at the last read, by member name (this
        node's sibling workers included)."""
        return dict(self._nodes)

    def node(self, node_id: str) -> NodeRecord | None:
        """A live record of node ``node_id`` (any of its workers': they share its addresses)."""
        return next((record for record in self._nodes.values() if record.id == node_id), None)

    def is_lost(self, session_id: str) -> bool:
        """Whether ``session_id`` was held by a node that left the cluster (within retention)."""
        expires = self._lost.get(session_id)
        return expires is not None and expires > time.monotonic()

    def lost_ids(self) -> list[str]:
        """The ids of the sessions held by nodes that left the cluster (within retention)."""
        now = time.monotonic()
        return [session_id for session_id, expires in self._lost.items() if expires > now]

    @property
    def detached(self) -> bool:
        """Redis has been out of reach for ``ttl`` seconds: the cluster no longer knows this node
        (its record expired), so it takes no new sessions until Redis is back."""
        since = self._unreachable_since
        return since is not None and time.monotonic() - since >= self.ttl

    # lifecycle

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hark-node-directory")

    async def listed(self, session_id: str) -> None:
        """Return once ``session_id`` is in this node's set in Redis (at once when it is, or
        when Redis is out of reach): a session acknowledged to a client is one the survivors
        know of, should this node die the next moment."""
        if self._unreachable_since is not None or session_id in (self._published or ()):
            return
        waiter = self._awaiting.get(session_id)
        if waiter is None:
            waiter = self._awaiting[session_id] = asyncio.get_running_loop().create_future()
        self.wake()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter), self.ttl)

    def _release_listed(self, everyone: bool = False) -> None:
        written = self._published or set()
        for session_id in [sid for sid in self._awaiting if everyone or sid in written]:
            waiter = self._awaiting.pop(session_id)
            if not waiter.done():
                waiter.set_result(None)

    def wake(self) -> None:
        """Write now rather than at the next beat (a session was created, draining began)."""
        self._wake.set()

    async def close(self) -> None:
        """Stop beating and delete this node's record, so the others see it gone at once; its
        session set stays, so they answer for what it held."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        self._release_listed(everyone=True)
        if self._joined and self._unreachable_since is None:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._redis.delete(node_key(self.member))
        await self._redis.aclose()

    async def _run(self) -> None:
        while True:
            _stop_when_cancelled()
            self._wake.clear()
            try:
                await self.beat()
            except (RedisError, OSError) as exc:
                self._unreachable(exc)
                self._release_listed(everyone=True)
            except Exception:  # a bug: logged, and the beats go on (a stopped beat is a death)
                logger.exception("node %s: writing to or reading Redis failed", self.member)
                self._release_listed(everyone=True)
            else:
                self._reachable()
            self._notice_detachment()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), BEAT_S)

    # one beat

    async def beat(self) -> None:
        """Write this node's record and session ids, then read the other nodes'."""
        if not self._joined:
            await self._take_over_predecessor()
        members = await self._write_own()
        self._joined = True
        self._release_listed()
        await self._read_others(set(members) - {self.member})
        self._forget_expired()

    async def _take_over_predecessor(self) -> None:
        """Session ids a previous process of this node left in its set are lost: this process
        does not hold them (it may share their node id, a restarted pod does)."""
        listed = _texts(await self._redis.smembers(sessions_key(self.member)))
        held = set(self._session_ids())
        predecessor = listed - held
        if predecessor:
            until = time.monotonic() + self.retention
            for session_id in predecessor:
                self._lost[session_id] = until
            logger.warning(
                "node %s: %d sessions of its previous process are lost (NODE_LOST)",
                self.member,
                len(predecessor),
            )

    async def _write_own(self) -> Collection[str]:
        record = self._describe()
        key, sessions = node_key(self.member), sessions_key(self.member)
        current = set(self._session_ids())
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=record.fields())  # type: ignore[arg-type]
            pipe.pexpire(key, _ms(self.ttl))
            pipe.sadd(NODES_KEY, self.member)
            if self._published is None:
                pipe.delete(sessions, lost_key(self.member))
                added, removed = current, set[str]()
            else:
                added, removed = current - self._published, self._published - current
            if added:
                pipe.sadd(sessions, *added)
            if removed:
                pipe.srem(sessions, *removed)
            pipe.smembers(NODES_KEY)
            results: list[Any] = await pipe.execute()
        self._published = current
        members: set[str] = results[-1]
        return members

    async def _read_others(self, others: set[str]) -> None:
        names = sorted(others)
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(node_key(name))
            hashes: list[dict[str, str]] = await pipe.execute()
        alive: dict[str, NodeRecord] = {}
        for name, fields in zip(names, hashes, strict=True):
            record = NodeRecord.from_fields(fields) if fields else None
            if record is not None and record.member == name:
                alive[name] = record
                self._gone.pop(name, None)
            elif not fields and name not in self._gone and not self._settling():
                await self._node_gone(name)
        if self._settling():  # the nodes not back yet may be coming back too: routed to, for now
            alive = {**self._nodes, **alive}
        self._nodes = alive

    async def _node_gone(self, node: str) -> None:
        """``node`` is a member whose record expired: it died (or lost Redis for ``ttl``)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.pttl(sessions_key(node))
            pipe.smembers(sessions_key(node))
            pipe.exists(lost_key(node))
            ttl_ms, held, declared = await pipe.execute()
        if not held and not declared:
            await self._redis.srem(NODES_KEY, node)  # nothing left to answer for
            return
        now = time.monotonic()
        until = now + (ttl_ms / 1000 if ttl_ms > 0 else self.retention)
        for session_id in held:
            self._lost[session_id] = until
        self._gone[node] = until
        if await self._redis.set(lost_key(node), self.member, nx=True, px=_ms(self.retention)):
            if ttl_ms < 0:
                await self._redis.pexpire(sessions_key(node), _ms(self.retention))
            logger.warning(
                "node %s left the cluster (no heartbeat for %g s): its %d sessions are lost "
                "(NODE_LOST)",
                node,
                self.ttl,
                len(held),
            )
        else:
            logger.info("node %s left the cluster: %d sessions lost", node, len(held))

    def _settling(self) -> bool:
        """Back from a Redis outage less than ``ttl`` ago: the other nodes may be coming back
        too, to a Redis that restarted empty or that kept their (now expired) records, so a
        node missing from Redis is not yet a dead one."""
        if self._unreachable_since is not None:  # the first beat back
            return True
        return self._back_at is not None and time.monotonic() - self._back_at < self.ttl

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for table in (self._lost, self._gone):
            for key in [key for key, until in table.items() if until <= now]:
                del table[key]

    # Redis out of reach

    def _unreachable(self, exc: BaseException) -> None:
        self._published = None  # Redis may come back empty: then write everything again
        if self._unreachable_since is None:
            self._unreachable_since = time.monotonic()
            logger.warning(
                "Redis unreachable (%s): this node keeps serving its sessions, and takes no new "
                "ones after %g s without Redis",
                exc,
                self.ttl,
            )

    def _reachable(self) -> None:
        if self._unreachable_since is not None:
            self._unreachable_since = None
            self._back_at = time.monotonic()
            logger.info("Redis reachable again: node %s rejoined the cluster", self.member)

    def _notice_detachment(self) -> None:
        detached = self.detached
        if detached != self._was_detached:
            self._was_detached = detached
            if detached:
                logger.warning(
                    "no Redis for %g s: the cluster no longer sees node %s; refusing new "
                    "sessions until it is back",
                    self.ttl,
                    self.member,
                )
            self._on_change()


def _stop_when_cancelled() -> None:
    """A cancellation that lands mid-command can come out of redis-py as its own error (or be
    lost in a timeout that expired at the same moment): the task was still asked to stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _texts(values: Collection[str | bytes]) -> set[str]:
    return {value if isinstance(value, str) else value.decode() for value in values}


def _ms(seconds: float) -> int:
    return max(1000, math.ceil(seconds * 1000))
