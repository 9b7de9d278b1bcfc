"""The browser-facing mirror: SSE session events, the listening endpoint and the demo page."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from media.v1 import media_pb2 as pb
from tests.support import grpc_stub, publish, running_server

JSON = {"Content-Type": "application/json"}


async def read_sse(
    response: aiohttp.ClientResponse, count: int
) -> list[tuple[str, dict[str, Any]]]:
    """The next ``count`` SSE messages as (id, JSON data); comments (heartbeats) are skipped."""
    messages: list[tuple[str, dict[str, Any]]] = []
    event_id, data = "", ""
    async with asyncio.timeout(10):
        while len(messages) < count:
            line = (await response.content.readline()).decode()
            if not line:
                break
            line = line.rstrip("\n")
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and data:
                messages.append((event_id, json.loads(data)))
                event_id, data = "", ""
    return messages


async def test_sse_mirrors_watch_session_and_ends_after_closed() -> None:
    async with running_server() as app, aiohttp.ClientSession() as http:
        created_stub = grpc_stub(app)
        async with created_stub as stub:
            created = await stub.CreateSession(pb.CreateSessionRequest())
        url = f"{app.base_url}/whip/{created.id}/events?token={created.token}"
        async with http.get(url) as events:
            assert events.status == 200
            assert events.content_type == "text/event-stream"
            [(first_id, snapshot)] = await read_sse(events, 1)
            assert first_id == "1"
            assert snapshot["snapshot"]["session"]["state"] == "NEW"
            publisher = await publish(app.base_url, f"/whip/{created.id}", token=created.token)
            try:
                states = await read_sse(events, 3)
                assert [(i, m["stateChanged"]["state"]) for i, m in states] == [
                    ("2", "CONNECTING"),
                    ("3", "CONNECTED"),
                    ("4", "READY"),
                ]
                assert await publisher.delete() == 200
                rest = await read_sse(events, 5)
                assert rest[-1][1]["stateChanged"]["closeReason"] == "CLIENT_DELETE"
                assert await events.content.read() == b""  # the stream ended
            finally:
                await publisher.vanish()


async def test_last_event_id_resumes_without_a_gap() -> None:
    async with running_server() as app, aiohttp.ClientSession() as http:
        publisher = await publish(app.base_url)
        try:
            url = f"{app.base_url}/whip/{publisher.session_id}/events"
            async with grpc_stub(app) as stub:
                await stub.StartListening(
                    pb.StartListeningRequest(session_id=publisher.session_id, wait_for_ready=True),
                    timeout=10,
                )
            async with http.get(url, headers={"Last-Event-ID": "2"}) as events:
                replay = await read_sse(events, 3)
            assert [i for i, _ in replay] == ["3", "4", "5"]
            assert replay[2][1]["listeningChanged"]["listening"] is True
            async with http.get(url, headers={"Last-Event-ID": "not-a-number"}) as bad:
                assert bad.status == 400
                assert "Last-Event-ID" in await bad.text()
            async with http.get(url, headers={"Last-Event-ID": "999"}) as ahead:
                assert ahead.status == 400
                assert "ahead of session" in await ahead.text()
        finally:
            await publisher.vanish()


async def test_the_listening_endpoint_mirrors_start_and_stop_listening() -> None:
    async with running_server() as app, aiohttp.ClientSession() as http:
        publisher = await publish(app.base_url)
        url = f"{publisher.url}/listening"
        try:
            async with http.post(url, json={"listening": True}) as early:
                assert early.status == 409
                assert "not READY" in await early.text()
            async with http.post(url, json={"listening": True, "wait_for_ready": True}) as ready:
                assert ready.status == 200
                session = await ready.json()
                assert session["state"] == "READY" and session["listening"] is True
            async with http.post(url, json={"listening": False}) as stopped:
                assert stopped.status == 200
                assert "listening" not in await stopped.json()  # false is JSON's default
            cases = [
                ({"Content-Type": "text/plain"}, "{}", 415, "application/json"),
                (JSON, "{not json", 400, "not JSON"),
                (JSON, '{"listening": "yes"}', 400, "listening"),
                (JSON, '{"listening": true, "wait_for_ready": 1}', 400, "wait_for_ready"),
                (JSON, '{"listening": true, "extra": 1}', 400, "unknown fields: extra"),
            ]
            for headers, body, status, reason in cases:
                async with http.post(url, headers=headers, data=body) as response:
                    assert response.status == status, body
                    assert reason in await response.text()
            async with http.post(
                f"{app.base_url}/whip/nope/listening", json={"listening": True}
            ) as missing:
                assert missing.status == 404
        finally:
            await publisher.vanish()


async def test_sse_and_listening_need_the_sessions_token_when_the_server_has_one() -> None:
    token = "server-token-for-sse"
    async with running_server(token=token) as app, aiohttp.ClientSession() as http:
        async with grpc_stub(app, token=token) as stub:
            created = await stub.CreateSession(pb.CreateSessionRequest())
        events = f"{app.base_url}/whip/{created.id}/events"
        async with http.get(events) as anonymous:
            assert anonymous.status == 401
        async with http.get(events + "?token=wrong-token") as wrong:
            assert wrong.status == 401
        for good in (f"{events}?token={created.token}", f"{events}?token={token}"):
            async with http.get(good) as allowed:
                assert allowed.status == 200
                assert (await read_sse(allowed, 1))[0][1]["snapshot"]["session"]["id"] == created.id
        listening = f"{app.base_url}/whip/{created.id}/listening?token={created.token}"
        async with http.post(listening, json={"listening": True}) as query_token:
            assert query_token.status == 401  # ?token= is only for EventSource


async def test_the_demo_page_is_served_with_its_assets() -> None:
    async with running_server() as app, aiohttp.ClientSession() as http:
        async with http.get(app.base_url + "/") as page:
            assert page.status == 200 and page.content_type == "text/html"
            html = await page.text()
        assert "/static/app.js" in html and "Start microphone" in html
        async with http.get(app.base_url + "/static/app.js") as script:
            assert script.status == 200
            assert 'from "/sdk/hark.js"' in await script.text()
        async with http.get(app.base_url + "/static/favicon.svg") as icon:
            assert icon.status == 200 and icon.content_type == "image/svg+xml"


async def test_a_page_on_another_origin_may_read_the_event_stream_of_a_live_session() -> None:
    """CORS on the streamed 200 itself, not only on errors: else the SDK cannot follow a session
    from another origin (allowed by --cors-origin, or any origin on a loopback-only server)."""
    page = "https://app.example"
    for overrides, allowed in (({}, "*"), ({"cors_origins": (page,)}, page)):
        async with running_server(**overrides) as app, aiohttp.ClientSession() as http:
            async with grpc_stub(app) as stub:
                created = await stub.CreateSession(pb.CreateSessionRequest())
            url = f"{app.base_url}/whip/{created.id}/events"
            headers = {"Origin": page, "Authorization": f"Bearer {created.token}"}
            async with http.get(url, headers=headers) as events:
                assert events.status == 200
                assert events.headers.get("Access-Control-Allow-Origin") == allowed, overrides
                assert "ETag" in events.headers["Access-Control-Expose-Headers"]
                [(_, snapshot)] = await read_sse(events, 1)
                assert snapshot["snapshot"]["session"]["id"] == created.id


async def test_a_closed_sessions_event_stream_replays_what_a_reconnecting_page_missed() -> None:
    """The SDK reconnects with Last-Event-ID after a cut; if the session closed meanwhile it
    learns the close reason (and the stream ends) instead of retrying forever."""
    async with running_server() as app, aiohttp.ClientSession() as http:
        async with grpc_stub(app) as stub:
            created = await stub.CreateSession(pb.CreateSessionRequest())
            await stub.EndSession(pb.EndSessionRequest(session_id=created.id, detail="bye"))
        url = f"{app.base_url}/whip/{created.id}/events"
        headers = {"Last-Event-ID": "1", "Authorization": f"Bearer {created.token}"}
        async with http.get(url, headers=headers) as events:
            assert events.status == 200
            [(event_id, closed)] = await read_sse(events, 1)
            assert event_id == "2"
            assert closed["stateChanged"]["closeReason"] == "API_END"
            assert await events.content.read() == b""  # ended: nothing more will come


async def test_the_sdk_is_importable_from_any_origin() -> None:
    async with (
        running_server(cors_origins=("https://only.example",)) as app,
        aiohttp.ClientSession() as http,
    ):
        for name, content_type in (
            ("hark.js", "text/javascript"),
            ("core.js", "text/javascript"),
            ("hark.d.ts", "application/typescript"),
        ):
            headers = {"Origin": "https://elsewhere.example"}
            async with http.get(f"{app.base_url}/sdk/{name}", headers=headers) as response:
                assert response.status == 200, name
                assert response.content_type == content_type, name
                assert response.headers["Access-Control-Allow-Origin"] == "*", name
                assert "max-age" in response.headers["Cache-Control"], name
                assert "export" in await response.text()
        for missing in ("package.json", "nothing.js", "..%2Fapp.js", ".hidden.js"):
            async with http.get(f"{app.base_url}/sdk/{missing}") as response:
                assert response.status == 404, missing
                assert "/sdk/hark.js" in await response.text(), missing
