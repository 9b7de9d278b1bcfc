"""ListSessions and WatchSessions over the whole cluster: the local answer merged with the same
call made to every member ``Router.others(scope)`` lists.

A call says how far it reaches in the ``x-hark-scope`` metadata: ``cluster`` (no marker: a
client's call) fans out to every sibling worker and every other node; ``node`` (a call from
another node) to the sibling workers only; ``worker`` (a call from a sibling worker) answers
from this process alone, so a call never goes round in circles.

A merged WatchSessions reconnects to a member whose stream breaks, from the position its last
message left (nothing lost or repeated). A member the router no longer lists, or whose sessions it
routes ``Lost``, is gone: each session it had open ends with ``CLOSED(NODE_LOST)``; so does each of
an owner that comes back as another incarnation (a restarted worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import grpc

from media.aio import cancel_and_wait
from media.cluster.forwarded import SCOPE
from media.cluster.grpc_forward import Upstreams, lost_session_pb
from media.cluster.routing import Elsewhere, Lost, Router
from media.cluster.watch_merge import MergeState, answers_for, start_positions
from media.core.event_log import Positions, decode_token, encode_token
from media.core.session_ids import Owner
from media.errors import HarkError, InvalidRequest
from media.rpc.error_status import abort_with
from media.rpc.service import MediaService
from media.server.session_table import SessionTable
from media.v1 import media_pb2 as pb

logger = logging.getLogger(__name__)

SCOPE_KEY: Final = SCOPE
Metadata: TypeAlias = tuple[tuple[str, str | bytes], ...]
SCOPES: Final = ("cluster", "node", "worker")
MEMBERSHIP_POLL_S: Final = 0.5
MEMBER_ANSWER_S: Final = 10.0
"""How long ListSessions waits for a member (a vanished host may never refuse the connection)."""
RECONNECT_DELAYS: Final = (0.05, 0.1, 0.2, 0.5, 1.0)
MERGE_QUEUE: Final = 256
BROKEN: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
"""A member's stream ending with one of these broke (a connection, a process): reconnect. Any
other status is the member's answer to the request, which the caller gets as it is."""


def scope_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == SCOPE_KEY:
            if value not in SCOPES:
                raise InvalidRequest(f"{SCOPE_KEY} must be cluster, node or worker", SCOPE_KEY)
            return str(value)
    return "cluster"


def reach(router: Router, me: Owner, scope: str) -> list[tuple[Elsewhere, str]]:
    """The members a call at ``scope`` fans out to, each with the scope it passes on."""
    if scope == "worker":
        return []
    members = router.others(scope)
    siblings = [(m, "worker") for m in members if m.owner.node == me.node and m.owner != me]
    if scope == "node":
        return siblings
    nodes: dict[str, Elsewhere] = {}
    for member in members:  # one call per other node: it answers for all its workers
        if member.owner.node != me.node:
            nodes.setdefault(member.owner.node, member)
    return siblings + [(member, "node") for member in nodes.values()]


class MemberFailed(Exception):
    """A member answered a fanned-out call with a status the caller gets as it is."""

    def __init__(self, member: Elsewhere, error: grpc.aio.AioRpcError) -> None:
        super().__init__(f"{member.owner}: {error.details()}")
        self.code = error.code()
        self.details = f"member {member.owner}: {error.details()}"
        self.trailing = tuple(error.trailing_metadata() or ())  # abort takes a tuple


class ClusterService(MediaService):
    """MediaService whose ListSessions and WatchSessions cover every member of the cluster."""

    def __init__(
        self,
        sessions: SessionTable,
        *,
        base_url: Callable[[], str],
        heartbeat_interval: float,
        grpc_address: Callable[[], str] = str,
        router: Router,
        channels: Upstreams,
    ) -> None:
        super().__init__(
            sessions,
            base_url=base_url,
            heartbeat_interval=heartbeat_interval,
            grpc_address=grpc_address,
        )
        self._router = router
        self._channels = channels
        self._me = sessions.owner

    def _metadata(self, context: grpc.aio.ServicerContext[Any, Any], scope: str) -> Metadata:
        """The caller's credentials, and the scope the member answers for."""
        passed = tuple(
            (k, v) for k, v in context.invocation_metadata() or () if k == "authorization"
        )
        return (*passed, (SCOPE_KEY, scope))

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListSessionsResponse:
        try:
            scope = scope_of(context)
        except HarkError as exc:
            await abort_with(context, exc)
        members = reach(self._router, self._me, scope)
        here = await super().ListSessions(request, context)
        remaining = context.time_remaining()
        timeout = MEMBER_ANSWER_S if remaining is None else min(remaining, MEMBER_ANSWER_S)
        failed: MemberFailed | None = None
        try:
            async with asyncio.TaskGroup() as group:
                asked = [
                    group.create_task(self._list_at(m, s, request, context, timeout))
                    for m, s in members
                ]
        except* MemberFailed as failures:
            failed = failures.exceptions[0]  # type: ignore[assignment]
        if failed is not None:
            await context.abort(failed.code, failed.details, failed.trailing)
        sessions = [*here.sessions, *(s for task in asked for s in task.result().sessions)]
        if request.include_closed and scope == "cluster":
            sessions += self._lost_elsewhere()
        sessions.sort(key=lambda s: (s.created_time.ToNanoseconds(), s.id))
        return pb.ListSessionsResponse(sessions=sessions)

    def _lost_elsewhere(self) -> list[pb.Session]:
        """The retained sessions of the other nodes that left the cluster, as CLOSED(NODE_LOST)."""
        return [
            lost_session_pb(session_id, Lost(owner))
            for session_id, owner in self._router.lost().items()
            if owner.node != self._me.node
        ]

    async def _list_at(
        self,
        member: Elsewhere,
        scope: str,
        request: pb.ListSessionsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        timeout: float | None,
    ) -> pb.ListSessionsResponse:
        stub = self._channels.stub(member.grpc_target)
        try:
            answer: pb.ListSessionsResponse = await stub.ListSessions(
                request, metadata=self._metadata(context, scope), timeout=timeout
            )
        except grpc.aio.AioRpcError as error:
            raise MemberFailed(member, error) from error
        return answer

    async def WatchSessions(
        self, request: pb.WatchSessionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SessionEvent]:
        merge: WatchMerge | None = None
        source: AsyncGenerator[pb.SessionEvent, None]
        try:
            scope = scope_of(context)
            if scope == "worker":
                source = self.watch_here(request, announce=True)
            else:
                merge = WatchMerge(self, request, context, scope)
                source = merge.run()
            async with contextlib.aclosing(source):
                async for message in source:
                    yield message
        except HarkError as exc:
            await abort_with(context, exc)
        except MemberFailed as failed:
            await context.abort(failed.code, failed.details, failed.trailing)
        finally:
            if merge is not None:
                await merge.close()


@dataclass(frozen=True, slots=True)
class _Message:
    source: Elsewhere | None
    message: pb.SessionEvent


@dataclass(frozen=True, slots=True)
class _Broken:
    member: Elsewhere


@dataclass(frozen=True, slots=True)
class _Ended:
    error: BaseException | None


class WatchMerge:
    """One cluster-wide WatchSessions: a task per source feeding one queue, read in order."""

    def __init__(
        self,
        service: ClusterService,
        request: pb.WatchSessionsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        scope: str,
    ) -> None:
        self._service = service
        self._request = request
        self._context = context
        self._scope = scope
        self._me = service._me
        start = start_positions(self._me, scope, request.resume_token)
        self._state = MergeState(self._me, start)
        self._start = start
        self._queue: asyncio.Queue[_Message | _Broken | _Ended] = asyncio.Queue(MERGE_QUEUE)
        self._pumps: dict[Owner, asyncio.Task[None]] = {}
        self._gone: set[Owner] = (
            set()
        )  # given up while still listed: not redialled until it returns
        self._tasks: list[asyncio.Task[None]] = []
        self._heard: set[Owner] = set()  # members whose stream said something
        self._clock = service._sessions.clock

    async def run(self) -> AsyncGenerator[pb.SessionEvent, None]:
        local = pb.WatchSessionsRequest()
        local.CopyFrom(self._request)
        local.resume_token = encode_token(self._start)
        self._tasks.append(asyncio.create_task(self._pump_here(local), name="hark-watch-here"))
        for member, scope in reach(self._service._router, self._me, self._scope):
            self._start_pump(member, scope, self._start)
        self._tasks.append(asyncio.create_task(self._poll_membership(), name="hark-watch-poll"))
        for message in self._departed_before(lambda owner: True):
            yield message
        heartbeat_s = self._service._heartbeat
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while True:
            try:
                wait = quiet_since + heartbeat_s - loop.time()
                item = await asyncio.wait_for(self._queue.get(), max(0.0, wait))
            except TimeoutError:
                item = None  # nothing sent for heartbeat_s, whatever the sources said
            if isinstance(item, _Ended):
                if item.error is not None:
                    raise item.error
                return
            for message in await self._handle(item):
                yield message
                quiet_since = loop.time()

    async def _handle(self, item: _Message | _Broken | None) -> list[pb.SessionEvent]:
        """What to send for one item of the queue (``None``: the merge has been quiet)."""
        now = self._clock.now()
        if item is None:
            return [self._state.heartbeat(now)]
        if isinstance(item, _Broken):
            return await self._check_member(item.member)
        if item.source is not None and item.source.owner not in self._pumps:
            return []  # the rest of a member already given up as lost
        source = None if item.source is None else item.source.owner
        out = self._state.apply(source, item.message, now)
        if item.message.HasField("heartbeat") and self._scope != "cluster":
            out.append(self._state.heartbeat(now))  # a member tells its merger where it is
        return out

    async def close(self) -> None:
        await cancel_and_wait(*self._tasks, *self._pumps.values())

    def _start_pump(self, member: Elsewhere, scope: str, base: Positions) -> None:
        task = asyncio.create_task(
            self._pump_member(member, scope, base), name=f"hark-watch-{member.owner}"
        )
        self._pumps[member.owner] = task

    async def _pump_here(self, request: pb.WatchSessionsRequest) -> None:
        error: BaseException | None = None
        try:
            # Announced: the merged token names this process from the start, even with no session.
            async for message in self._service.watch_here(request, announce=True):
                await self._queue.put(_Message(None, message))
        except HarkError as exc:
            error = exc
        await self._queue.put(_Ended(error))

    async def _pump_member(self, member: Elsewhere, scope: str, base: Positions) -> None:
        """Relay a member's stream; after a break, tell the merge and come back where it left."""
        mine: Positions = {}
        failures = 0
        while True:
            request = pb.WatchSessionsRequest(
                include_closed=self._request.include_closed,
                resume_token=encode_token({**base, **mine}),
            )
            member = self._current(member)
            stub = self._service._channels.stub(member.grpc_target)
            call = stub.WatchSessions(
                request, metadata=self._service._metadata(self._context, scope)
            )
            try:
                async for message in call:
                    failures = 0
                    self._heard.add(member.owner)
                    for key, position in _positions(message).items():
                        if answers_for(self._me, member.owner, key):
                            mine[key] = position
                    await self._queue.put(_Message(member, message))
            except grpc.aio.AioRpcError as error:
                if error.code() not in BROKEN:
                    await self._queue.put(_Ended(MemberFailed(member, error)))
                    return
                logger.info(
                    "watch of every session: %s broke (%s)", member.owner, error.code().name
                )
            finally:
                call.cancel()
            await self._queue.put(_Broken(member))
            await asyncio.sleep(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)])
            failures += 1

    def _current(self, member: Elsewhere) -> Elsewhere:
        """Where the member is now (a restarted node may come back at another address)."""
        for listed, _ in reach(self._service._router, self._me, self._scope):
            if listed.owner == member.owner:
                return listed
        return member

    async def _check_member(self, member: Elsewhere) -> list[pb.SessionEvent]:
        """After ``member`` broke: ``NODE_LOST`` for its sessions if it is gone, else nothing
        (its pump reconnects)."""
        if member.owner not in self._pumps:
            return []
        listed = {m.owner for m, _ in reach(self._service._router, self._me, self._scope)}
        router = self._service._router
        if member.owner not in listed:
            return await self._give_up(member.owner)
        if any(isinstance(router.route(sid), Lost) for sid in self._state.open_ids(member.owner)):
            self._gone.add(member.owner)
            return await self._give_up(member.owner)
        return []

    async def _give_up(self, owner: Owner) -> list[pb.SessionEvent]:
        """A member no longer listed is dialled again once it is (``_poll_membership``); one
        given up while still listed (in ``_gone``) only after it has left the list."""
        pump = self._pumps.pop(owner, None)
        if pump is not None:
            await cancel_and_wait(pump)
        logger.info("watch of every session: %s is gone; its sessions are NODE_LOST", owner)
        out = self._state.lost(owner, self._clock.now())
        if owner not in self._heard:  # it died before its stream told this one anything
            out += self._departed_before(lambda lost: answers_for(self._me, owner, str(lost)))
        return out

    def _departed_before(self, among: Callable[[Owner], bool]) -> list[pb.SessionEvent]:
        """CLOSED(NODE_LOST) snapshots of the retained sessions of other nodes that left the
        cluster before this stream heard of it (``among`` their owners): those of an owner the
        request's token names (it missed their end: marked resync), and with include_closed any.
        Every node knows them from the directory, so only the merge a client called sends them."""
        if self._scope != "cluster":
            return []
        named, now = self._start.keys(), self._clock.now()
        resync: list[pb.Session] = []
        closed: list[pb.Session] = []
        for session_id, owner in sorted(self._service._router.lost().items()):
            if owner.node == self._me.node or not among(owner):
                continue
            if str(owner) in named:
                resync.append(lost_session_pb(session_id, Lost(owner)))
            elif self._request.include_closed:
                closed.append(lost_session_pb(session_id, Lost(owner)))
        return [
            *self._state.departed(resync, True, now),
            *self._state.departed(closed, False, now),
        ]

    async def _poll_membership(self) -> None:
        """Members that join get a stream of their own; members that leave one last ``_Broken``."""
        router = self._service._router
        while True:
            await asyncio.sleep(MEMBERSHIP_POLL_S)
            members = dict((m.owner, (m, s)) for m, s in reach(router, self._me, self._scope))
            self._gone &= members.keys()
            for owner, (member, scope) in members.items():
                if owner not in self._pumps and owner not in self._gone:
                    self._start_pump(member, scope, {})
            for owner in list(self._pumps):
                if owner not in members:
                    gone = Elsewhere(owner, "", "")
                    await self._queue.put(_Broken(gone))


def _positions(message: pb.SessionEvent) -> Positions:
    with contextlib.suppress(InvalidRequest):
        return decode_token(message.resume_token)
    return {}
