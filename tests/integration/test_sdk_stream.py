"""hark.js's event stream against a real Hark, run by Node: a session that is gone or closed is
reported CLOSED at once, with its reason, instead of being retried forever."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil

import pytest

from media.v1 import media_pb2 as pb
from tests.support import grpc_stub, running_server

NODE = shutil.which("node")
FOLLOW = pathlib.Path(__file__).resolve().parents[1] / "sdk" / "follow.mjs"
TOKEN = "node-sdk-token-123"


def require_node() -> str:
    if NODE is not None:
        return NODE
    if os.environ.get("CI"):
        pytest.fail("node is not installed: CI must run the SDK tests", pytrace=False)
    pytest.skip("node is not installed")


async def test_a_closed_or_vanished_session_is_reported_closed_not_retried() -> None:
    node = require_node()
    async with running_server(token=TOKEN) as app, grpc_stub(app, token=TOKEN) as stub:
        ended = await stub.CreateSession(pb.CreateSessionRequest())
        await stub.EndSession(pb.EndSessionRequest(session_id=ended.id, detail="bye"))
        urls = [f"{app.base_url}/whip/{ended.id}", f"{app.base_url}/whip/NoSuchSession0000"]
        proc = await asyncio.create_subprocess_exec(
            node, str(FOLLOW), TOKEN, *urls, stdout=asyncio.subprocess.PIPE
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    closed, gone = (json.loads(line) for line in out.decode().splitlines())
    assert closed == {
        "code": "API_END",
        "reason": "bye",
        "state": "CLOSED",
        "closeReason": "API_END",
    }
    assert gone["code"] == 404 and "NoSuchSession0000" in gone["reason"], gone
    assert gone["state"] == "CLOSED" and gone["closeReason"] == "CLOSE_REASON_UNSPECIFIED"
