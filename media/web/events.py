"""The browser's mirror of the control plane: session events as Server-Sent Events, and listening.

``GET /whip/{id}/events`` streams the same revisioned events as ``WatchSession`` (protobuf's JSON
mapping), with the SSE ``id:`` set to the revision so ``Last-Event-ID`` resumes without a gap.
``POST /whip/{id}/listening`` mirrors Start/StopListening with the same error semantics.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Final, Protocol

from aiohttp import web
from google.protobuf import json_format

from media.core.events import SessionEvent
from media.errors import InvalidRequest, NotReady, ReadyDeadlineExceeded, SubscriberTooSlow
from media.logs import session_logger
from media.rpc.messages import event_pb, session_pb
from media.server.live_session import LiveSession
from media.server.session_table import SessionTable
from media.server.watch import WatchItem
from media.v1 import media_pb2 as pb
from media.web.middleware import preflight
from media.web.request_bodies import read_text_body, require_content_type

logger = logging.getLogger(__name__)

MAX_LAST_EVENT_ID: Final = 2**63


class Authorize(Protocol):
    def __call__(
        self, request: web.Request, live: LiveSession, *, query_token: bool = False
    ) -> None: ...


class SessionEventsHandlers:
    def __init__(
        self,
        sessions: SessionTable,
        *,
        authorize: Authorize,
        base_url: Callable[[], str],
        heartbeat_interval: float,
        wait_limit: float,
    ) -> None:
        self._sessions = sessions
        self._authorize = authorize
        self._base_url = base_url
        self._heartbeat = heartbeat_interval
        self._wait_limit = wait_limit

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("GET", "/whip/{id}/events", self.events)
        app.router.add_route("OPTIONS", "/whip/{id}/events", self.options)
        app.router.add_route("POST", "/whip/{id}/listening", self.listening)
        app.router.add_route("OPTIONS", "/whip/{id}/listening", self.options)

    async def options(self, request: web.Request) -> web.Response:
        return preflight()

    def _whip_url(self, session_id: str) -> str:
        return f"{self._base_url()}/whip/{session_id}"

    async def events(self, request: web.Request) -> web.StreamResponse:
        live = self._sessions.get(request.match_info["id"])
        self._authorize(request, live, query_token=True)
        log = session_logger(logger, live.id)
        since_revision = requested_revision(request)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        with self._sessions.watch(live.id, since_revision, heartbeat_s=self._heartbeat) as watch:
            try:
                await response.prepare(request)
                async for item in watch:
                    if item is None:
                        await response.write(b": heartbeat\n\n")
                    else:
                        await self._send(response, item)
            except ConnectionResetError:
                log.debug("SSE watcher went away")
            except SubscriberTooSlow as exc:
                # EventSource reconnects by itself, sending Last-Event-ID: nothing is lost.
                log.info("SSE watcher ended: %s", exc)
        return response

    async def _send(self, response: web.StreamResponse, item: WatchItem) -> None:
        message = event_pb(item, self._whip_url(self._session_id_of(item)))
        await response.write(sse_message(message))

    @staticmethod
    def _session_id_of(item: WatchItem) -> str:
        return item.session_id if isinstance(item, SessionEvent) else item.snapshot.id

    async def listening(self, request: web.Request) -> web.Response:
        live = self._sessions.get_open(request.match_info["id"])
        self._authorize(request, live)
        require_content_type(request, "application/json")
        listening, wait_for_ready = _listening_request(
            await read_text_body(request, "listening request")
        )
        if listening:
            try:
                snapshot = await self._sessions.start_listening(
                    live.id, wait=wait_for_ready, wait_limit=self._wait_limit
                )
            except ReadyDeadlineExceeded as exc:
                raise NotReady(exc.session_id, exc.state) from None
        else:
            snapshot = live.stop_listening()
        body = json_format.MessageToDict(session_pb(snapshot, self._whip_url(live.id)))
        return web.json_response(body)


def sse_message(message: pb.SessionEvent) -> bytes:
    """One SSE message: ``id:`` the revision, ``data:`` the event in protobuf's JSON mapping."""
    data = json_format.MessageToJson(message, indent=None)
    return f"id: {message.revision}\ndata: {data}\n\n".encode()


def requested_revision(request: web.Request) -> int:
    """``Last-Event-ID`` (EventSource's resume) or ``?since_revision=``: ASCII digits only."""
    header = request.headers.get("Last-Event-ID")
    name, raw = ("Last-Event-ID", header) if header else ("since_revision", None)
    if raw is None:
        raw = request.query.get("since_revision") or "0"
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19) or int(raw) >= MAX_LAST_EVENT_ID:
        raise InvalidRequest(f"{name} must be a revision number from 0 to {MAX_LAST_EVENT_ID - 1}")
    return int(raw)


def _listening_request(text: str) -> tuple[bool, bool]:
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"body is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidRequest("body is not a listening request: it is nested too deeply") from exc
    if not isinstance(body, dict) or not isinstance(body.get("listening"), bool):
        raise InvalidRequest('body must be {"listening": true|false, "wait_for_ready": bool}')
    wait = body.get("wait_for_ready", False)
    if not isinstance(wait, bool):
        raise InvalidRequest("wait_for_ready must be true or false")
    unknown = sorted(set(body) - {"listening", "wait_for_ready"})
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(map(str, unknown))}")
    return bool(body["listening"]), wait
