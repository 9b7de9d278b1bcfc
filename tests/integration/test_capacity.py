"""--max-sessions holds while offers are still being negotiated."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from media.errors import CapacityExceeded
from media.v1 import media_pb2 as pb
from tests.offers import OFFER
from tests.support import grpc_stub, running_server


async def test_peers_being_negotiated_count_against_max_sessions() -> None:
    async with running_server(max_sessions=2) as app:
        table = app.sessions
        with table.reserve(), table.reserve():
            with pytest.raises(CapacityExceeded, match="2 live or negotiating sessions"):
                table.check_capacity()
        table.check_capacity()  # the places are free again once negotiation ends


async def test_a_burst_of_posts_builds_no_more_sessions_than_fit() -> None:
    async with running_server(max_sessions=2) as app, grpc_stub(app) as stub:
        headers = {"Content-Type": "application/sdp"}
        async with aiohttp.ClientSession() as http:

            async def post() -> tuple[int, str, str | None]:
                async with http.post(app.base_url + "/whip", data=OFFER, headers=headers) as r:
                    return r.status, await r.text(), r.headers.get("Retry-After")

            answers = await asyncio.gather(*(post() for _ in range(8)))
        listed = await stub.ListSessions(pb.ListSessionsRequest(include_closed=True))
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [201, 201] + [503] * 6, answers
    refused = [(text, retry) for status, text, retry in answers if status == 503]
    assert all("at capacity" in text and retry for text, retry in refused), refused
    assert len(listed.sessions) == 2
