"""The browser's mirror of the control plane: session events as Server-Sent Events, and listening.

``GET /whip/{id}/events`` streams the same revisioned events as ``WatchSession`` (protobuf's JSON
mapping), with the SSE ``id:`` set to the revision so ``Last-Event-ID`` resumes without a gap.
``POST /whip/{id}/listening`` mirrors Start/StopListening with the same error semantics.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Final, Protocol

from aiohttp import web
from google.protobuf import json_format

from media.core.events import SessionEvent, SessionState
from media.errors import InvalidRequest, NotReady, SubscriberTooSlow
from media.rpc.messages import event_pb, is_closed_event, session_pb
from media.server.session_table import END, Entry, Registry, WatchItem
from media.web.middleware import preflight
from media.web.request_bodies import read_text_body, require_content_type

logger = logging.getLogger(__name__)

MAX_LAST_EVENT_ID: Final = 2**63


class Authorize(Protocol):
    def __call__(
        self, request: web.Request, entry: Entry, *, query_token: bool = False
    ) -> None: ...


class SessionEventsHandlers:
    def __init__(
        self,
        registry: Registry,
        *,
        authorize: Authorize,
        base_url: Callable[[], str],
        heartbeat_interval: float,
        wait_limit: float,
    ) -> None:
        self._registry = registry
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
        entry = self._registry.lookup(request.match_info["id"])
        self._authorize(request, entry, query_token=True)
        session_id = entry.session.id
        initial, sub = self._registry.subscribe(session_id, _since_revision(request))
        gauge = self._registry.metrics.watch_streams
        gauge.inc()
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        try:
            await response.prepare(request)
            for item in initial:
                await self._send(response, item)
            while sub is not None:
                event = await sub.get(self._heartbeat)
                if event is END:
                    break
                if event is None:
                    await response.write(b": heartbeat\n\n")
                    continue
                assert isinstance(event, SessionEvent)
                await self._send(response, event)
                if is_closed_event(event):
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            logger.debug("session %s: SSE watcher went away", session_id)
        except SubscriberTooSlow as exc:
            # EventSource reconnects by itself, sending Last-Event-ID: nothing is lost.
            logger.info("session %s: SSE watcher ended: %s", session_id, exc)
        finally:
            gauge.dec()
            if sub is not None:
                self._registry.unsubscribe(session_id, sub)
        return response

    async def _send(self, response: web.StreamResponse, item: WatchItem) -> None:
        message = event_pb(item, self._whip_url(self._session_id_of(item)))
        data = json_format.MessageToJson(message, indent=None)
        await response.write(f"id: {message.revision}\ndata: {data}\n\n".encode())

    @staticmethod
    def _session_id_of(item: WatchItem) -> str:
        return item.session_id if isinstance(item, SessionEvent) else item.snapshot.id

    async def listening(self, request: web.Request) -> web.Response:
        entry = self._registry.lookup_open(request.match_info["id"])
        self._authorize(request, entry)
        require_content_type(request, "application/json")
        listening, wait_for_ready = _listening_request(
            await read_text_body(request, "listening request")
        )
        session_id = entry.session.id
        if listening:
            if wait_for_ready and entry.session.state is not SessionState.READY:
                try:
                    await asyncio.wait_for(self._registry.wait_ready(session_id), self._wait_limit)
                except TimeoutError:
                    raise NotReady(session_id, entry.session.state.name) from None
            snapshot = self._registry.start_listening(session_id)
        else:
            snapshot = self._registry.stop_listening(session_id)
        body = json_format.MessageToDict(session_pb(snapshot, self._whip_url(session_id)))
        return web.json_response(body)


def _since_revision(request: web.Request) -> int:
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
