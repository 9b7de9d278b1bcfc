"""Every session-scoped RPC at any member: answered here, forwarded to the owner, or refused.

``ForwardingService`` wraps this process's ``MediaService``. For a session another process owns
(``Elsewhere``) it makes the same call on a cached channel to the owner, with the caller's
metadata, the time left before the caller's deadline, and the signed ``x-hark-forwarded`` marker;
the caller going away cancels the upstream call, and the owner's status, message and details come
back unchanged. A ``Lost`` owner's sessions read as CLOSED with ``NODE_LOST``; ids naming no known
owner are answered by the local service (which answers NOT_FOUND for what it does not hold). A
call a member forwarded here goes at most to the sibling worker its id names
(``forwarded.may_forward``), so nothing is ever forwarded to another node twice or to a guessed
address. The owner sees the original client's address (signed by the forwarding member) in the
``x-hark-client-address`` metadata: gRPC has no per-client limit, so it is carried for logs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, TypeVar

import grpc

from media.cluster.forwarded import (
    client_address_from_metadata,
    forwarded_pairs,
    is_forwarded,
    may_forward,
)
from media.cluster.routing import Elsewhere, Lost, Route, Router
from media.errors import HarkError, SessionClosed
from media.logs import session_logger
from media.rpc.error_status import streaming, unary
from media.rpc.service import MediaService
from media.server.auth import SessionTokens
from media.v1 import media_pb2 as pb
from media.v1 import media_pb2_grpc

logger = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
R = TypeVar("R")

STATUS_DETAILS: Final = "grpc-status-details-bin"
NOT_FORWARDED_METADATA: Final = ("user-agent", "content-type", "te", "host")
CHANNEL_OPTIONS: Final = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
WATCH_RETRY_FIRST_S: Final = 0.05
WATCH_RETRY_MAX_S: Final = 0.5


def lost_detail(lost: Lost) -> str:
    return f"node {lost.owner.node} (worker {lost.owner.worker}) holding the session was lost"


def lost_session_pb(session_id: str, lost: Lost) -> pb.Session:
    """What is known of a session whose owner is gone: CLOSED with NODE_LOST."""
    return pb.Session(
        id=session_id,
        state=pb.CLOSED,
        close_reason=pb.NODE_LOST,
        close_detail=lost_detail(lost),
        node=lost.owner.node,
    )


def lost_error(session_id: str, lost: Lost) -> HarkError:
    return SessionClosed(session_id, "NODE_LOST", lost_detail(lost))


def lost_event(session_id: str, lost: Lost, revision: int, previous: int) -> pb.SessionEvent:
    """What a watcher that has seen up to ``revision`` (0: nothing) is told when the owner is
    found lost: a CLOSED snapshot, or the next revision changing ``previous`` to CLOSED."""
    if revision == 0:
        session = lost_session_pb(session_id, lost)
        return pb.SessionEvent(session_id=session_id, snapshot=pb.Snapshot(session=session))
    return pb.SessionEvent(
        session_id=session_id,
        revision=revision + 1,
        state_changed=pb.StateChanged(
            state=pb.CLOSED,
            previous=previous,  # type: ignore[arg-type]
            close_reason=pb.NODE_LOST,
            close_detail=lost_detail(lost),
        ),
    )


def peer_address(peer: str) -> str:
    """The client's address in grpc's ``ipv4:1.2.3.4:5``/``ipv6:[::1]:5``/``unix:...`` form."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return peer


def _upstream_failed(error: grpc.aio.AioRpcError) -> bool:
    """The owner could not be reached (as opposed to the owner answering UNAVAILABLE itself)."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    return not any(key == STATUS_DETAILS for key, _ in error.trailing_metadata() or ())


async def pass_through(context: Context, error: grpc.aio.AioRpcError) -> None:
    """End the call with the owner's status code, message and details, unchanged."""
    trailing = tuple(error.trailing_metadata() or ())
    await context.abort(error.code(), error.details() or "", trailing)


class Upstreams:
    """One grpc.aio channel per owner target, opened on first use, closed by ``close()``."""

    def __init__(self, credentials: grpc.ChannelCredentials | None = None) -> None:
        self._credentials = credentials
        self._stubs: dict[str, tuple[grpc.aio.Channel, media_pb2_grpc.MediaServiceAsyncStub]] = {}

    @property
    def targets(self) -> list[str]:
        return list(self._stubs)

    def stub(self, target: str) -> media_pb2_grpc.MediaServiceAsyncStub:
        if target not in self._stubs:
            if self._credentials is None or target.startswith("unix:"):
                channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.secure_channel(target, self._credentials, CHANNEL_OPTIONS)
            self._stubs[target] = (channel, media_pb2_grpc.MediaServiceStub(channel))
        return self._stubs[target][1]

    async def close(self) -> None:
        stubs, self._stubs = self._stubs, {}
        for channel, _ in stubs.values():
            await channel.close()


class ForwardingService(media_pb2_grpc.MediaServiceServicer):
    def __init__(
        self,
        local: MediaService,
        router: Router,
        tokens: SessionTokens,
        upstreams: Upstreams,
    ) -> None:
        self.local = local
        self.router = router
        self._tokens = tokens
        self.upstreams = upstreams

    # routing

    def _route(self, session_id: str, context: Context) -> Route | None:
        """Where the call goes; None: the local service answers (validation, forwarded calls).
        A call forwarded here for a lost session (this node's predecessor's, which the caller's
        node could not tell from this node's own) is answered as lost, never forwarded again."""
        if not session_id or len(session_id) > 128:
            return None
        route = self.router.route(session_id)
        forwarded = is_forwarded(context.invocation_metadata() or ())
        if isinstance(route, Elsewhere) and not may_forward(route, forwarded):
            return None
        return route

    def client_address(self, context: Context) -> str:
        """The original client: as a forwarding member signed it, else this call's peer."""
        signed = client_address_from_metadata(self._tokens, context.invocation_metadata() or ())
        return signed if signed is not None else peer_address(context.peer())

    def _metadata(self, context: Context) -> list[tuple[str, str | bytes]]:
        kept: list[tuple[str, str | bytes]] = [
            (key, value)
            for key, value in context.invocation_metadata() or ()
            if not key.startswith(("grpc-", ":", "x-hark-")) and key not in NOT_FORWARDED_METADATA
        ]
        return kept + list(forwarded_pairs(self._tokens, self.client_address(context)))

    def call_options(self, context: Context) -> dict[str, Any]:
        return {"metadata": self._metadata(context), "timeout": context.time_remaining()}

    async def _unary(
        self,
        name: str,
        session_id: str,
        request: Any,
        context: Context,
        lost: Callable[[Lost], Any],
    ) -> Any:
        route = self._route(session_id, context)
        if isinstance(route, Elsewhere):
            return await self.relay_unary(name, route, request, context, lost)
        if isinstance(route, Lost):
            return lost(route)
        return await getattr(self.local, name)(request, context)

    async def relay_unary(
        self,
        name: str,
        route: Elsewhere,
        request: Any,
        context: Context,
        lost: Callable[[Lost], Any] | None = None,
    ) -> Any:
        """The unary RPC ``name`` made at ``route``'s owner; its error ends this call unchanged,
        unless the owner cannot be reached and ``request.session_id`` now routes ``Lost``:
        then ``lost`` answers."""
        call = getattr(self.upstreams.stub(route.grpc_target), name)(
            request, **self.call_options(context)
        )
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            if lost is not None and _upstream_failed(error):
                now = self.router.route(str(request.session_id))
                if isinstance(now, Lost):
                    return lost(now)
            await pass_through(context, error)
            raise AssertionError("abort returned") from error
        finally:
            call.cancel()

    # session-scoped unary RPCs

    @unary
    async def GetSession(self, request: pb.GetSessionRequest, context: Context) -> pb.Session:
        session: pb.Session = await self._closed_when_lost("GetSession", request, context)
        return session

    @unary
    async def EndSession(self, request: pb.EndSessionRequest, context: Context) -> pb.Session:
        # Ending a closed session is a no-op that returns it.
        session: pb.Session = await self._closed_when_lost("EndSession", request, context)
        return session

    @unary
    async def StartListening(
        self, request: pb.StartListeningRequest, context: Context
    ) -> pb.Session:
        session: pb.Session = await self._refused_when_lost("StartListening", request, context)
        return session

    @unary
    async def StopListening(self, request: pb.StopListeningRequest, context: Context) -> pb.Session:
        session: pb.Session = await self._refused_when_lost("StopListening", request, context)
        return session

    @unary
    async def StopPlayback(
        self, request: pb.StopPlaybackRequest, context: Context
    ) -> pb.StopPlaybackResponse:
        stopped: pb.StopPlaybackResponse = await self._refused_when_lost(
            "StopPlayback", request, context
        )
        return stopped

    async def _closed_when_lost(self, name: str, request: Any, context: Context) -> Any:
        session_id = str(request.session_id)

        def snapshot(lost: Lost) -> pb.Session:
            return lost_session_pb(session_id, lost)

        return await self._unary(name, session_id, request, context, snapshot)

    async def _refused_when_lost(self, name: str, request: Any, context: Context) -> Any:
        session_id = str(request.session_id)

        def refuse(lost: Lost) -> Any:
            raise lost_error(session_id, lost)

        return await self._unary(name, session_id, request, context, refuse)

    # session-scoped streams

    @unary
    async def StreamAudio(  # type: ignore[override]  # context.write, like MediaService's
        self, request: pb.StreamAudioRequest, context: Context
    ) -> None:
        session_id = request.session_id
        route = self._route(session_id, context)
        if isinstance(route, Lost):
            raise lost_error(session_id, route)
        if not isinstance(route, Elsewhere):
            await self.local.StreamAudio(request, context)
            return
        call = self.upstreams.stub(route.grpc_target).StreamAudio(
            request, **self.call_options(context)
        )
        try:
            async for chunk in call:
                await context.write(chunk)
        except grpc.aio.AioRpcError as error:
            now = self.router.route(session_id)
            if _upstream_failed(error) and isinstance(now, Lost):
                raise lost_error(session_id, now) from None
            await pass_through(context, error)
        finally:
            call.cancel()

    @streaming
    async def WatchSession(
        self, request: pb.WatchSessionRequest, context: Context
    ) -> AsyncIterator[pb.SessionEvent]:
        route = self._route(request.session_id, context)
        if not isinstance(route, Elsewhere | Lost):
            async for event in self.local.WatchSession(request, context):
                yield event
            return
        async for event in _ForwardedWatch(self, request, context).events(route):
            yield event

    @unary
    async def PlayAudio(
        self, request_iterator: AsyncIterator[pb.PlayAudioRequest], context: Context
    ) -> pb.PlayAudioResponse:
        messages = aiter(request_iterator)
        first = await anext(messages, None)
        starts = first is not None and first.WhichOneof("payload") == "start"
        session_id = first.start.session_id if first is not None and starts else ""
        route = self._route(session_id, context)
        if isinstance(route, Lost):
            raise lost_error(session_id, route)
        if not isinstance(route, Elsewhere):
            return await self.local.PlayAudio(_prepend(first, messages), context)
        relay = _RequestRelay(first, messages)
        call = self.upstreams.stub(route.grpc_target).PlayAudio(
            relay.messages(), **self.call_options(context)
        )
        relay.call = call
        try:
            response: pb.PlayAudioResponse = await call
            return response
        except grpc.aio.AioRpcError as error:
            relay.raise_error()
            now = self.router.route(session_id)
            if _upstream_failed(error) and isinstance(now, Lost):
                raise lost_error(session_id, now) from None
            await pass_through(context, error)
            raise AssertionError("abort returned") from error
        except asyncio.CancelledError:
            relay.raise_error()
            raise
        finally:
            call.cancel()

    # whole-process RPCs: answered here (placement and fan-out build on these)

    async def CreateSession(self, request: pb.CreateSessionRequest, context: Context) -> pb.Session:
        return await self.local.CreateSession(request, context)

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: Context
    ) -> pb.ListSessionsResponse:
        return await self.local.ListSessions(request, context)

    async def WatchSessions(
        self, request: pb.WatchSessionsRequest, context: Context
    ) -> AsyncIterator[pb.SessionEvent]:
        async for event in self.local.WatchSessions(request, context):
            yield event


async def _prepend(first: R | None, rest: AsyncIterator[R]) -> AsyncIterator[R]:
    if first is None:
        return
    yield first
    async for item in rest:
        yield item


class _RequestRelay:
    """The caller's PlayAudio messages, relayed to the owner. A message that does not decode
    (``MalformedRequest``) cancels the upstream call, and the caller gets that error instead of
    the owner playing what came before it."""

    def __init__(self, first: pb.PlayAudioRequest | None, rest: AsyncIterator[Any]) -> None:
        self._first = first
        self._rest = rest
        self.call: grpc.aio.StreamUnaryCall[Any, Any] | None = None
        self._error: HarkError | None = None

    async def messages(self) -> AsyncIterator[pb.PlayAudioRequest]:
        try:
            async for message in _prepend(self._first, self._rest):
                yield message
        except HarkError as exc:
            self._error = exc
            if self.call is not None:
                self.call.cancel()

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error


class _ForwardedWatch:
    """A WatchSession relayed from the owner, reconnecting with ``since_revision`` when the
    owner cannot be reached, re-routing each time; an owner found lost ends it with CLOSED."""

    def __init__(
        self, service: ForwardingService, request: pb.WatchSessionRequest, context: Context
    ) -> None:
        self._service = service
        self._session_id = request.session_id
        self._context = context
        self._revision = request.since_revision
        self._state: int = pb.SESSION_STATE_UNSPECIFIED
        self._log = session_logger(logger, request.session_id)
        self._done = False
        self._connected = True

    async def events(self, route: Elsewhere | Lost) -> AsyncIterator[pb.SessionEvent]:
        delay = WATCH_RETRY_FIRST_S
        current: Route = route
        while isinstance(current, Elsewhere):
            relayed = False
            async for event in self._relay(current):
                relayed = True
                yield event
            if self._done:
                return
            delay = WATCH_RETRY_FIRST_S if relayed else min(WATCH_RETRY_MAX_S, delay * 2)
            await asyncio.sleep(delay)
            current = self._service.router.route(self._session_id)
        if isinstance(current, Lost):
            yield lost_event(self._session_id, current, self._revision, self._state)
            return
        request = pb.WatchSessionRequest(session_id=self._session_id, since_revision=self._revision)
        async for event in self._service.local.WatchSession(request, self._context):
            yield event

    async def _relay(self, route: Elsewhere) -> AsyncIterator[pb.SessionEvent]:
        request = pb.WatchSessionRequest(session_id=self._session_id, since_revision=self._revision)
        service = self._service
        call = service.upstreams.stub(route.grpc_target).WatchSession(
            request, **service.call_options(self._context)
        )
        try:
            async for event in call:
                self._connected = True
                self._note(event)
                yield event
            self._done = True
        except grpc.aio.AioRpcError as error:
            if not _upstream_failed(error):
                self._done = True
                await pass_through(self._context, error)
            # INFO once per outage: retries while the owner stays unreachable go to DEBUG.
            log = self._log.info if self._connected else self._log.debug
            log("watch relay from %s broke (%s): reconnecting", route.owner, error.code().name)
            self._connected = False
        finally:
            call.cancel()

    def _note(self, event: pb.SessionEvent) -> None:
        self._revision = max(self._revision, event.revision)
        if event.HasField("snapshot"):
            self._state = event.snapshot.session.state
        elif event.HasField("state_changed"):
            self._state = event.state_changed.state
