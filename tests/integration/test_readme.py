"""The README's examples run as a newcomer would run them: copied out, against a real server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import re
import sys

from media.v1 import media_pb2 as pb
from tests.support import grpc_stub, next_event, publish, running_server

ROOT = pathlib.Path(__file__).resolve().parents[2]


def backend_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## A backend in 20 lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "the README lost its backend example"
    return code[1]


async def start_example(
    target: str, tmp_path: pathlib.Path, stdout: int = asyncio.subprocess.PIPE
) -> asyncio.subprocess.Process:
    script = tmp_path / "backend.py"
    script.write_text(backend_example().replace("127.0.0.1:50051", target))
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
    )


def full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is full: whoever writes to it next waits until it is read."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"x" * 4096)
    os.set_blocking(write_end, True)
    return read_end, write_end


def read_to_end(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as pipe:
        return pipe.read()


async def test_the_backend_example_starts_listening_once_a_publisher_is_ready(
    tmp_path: pathlib.Path,
) -> None:
    async with running_server() as app:
        example = await start_example(app.grpc_target, tmp_path)
        assert example.stdout is not None
        line = (await asyncio.wait_for(example.stdout.readline(), 30)).decode()
        match = re.fullmatch(r"publish to (\S+) with token (\S+)\n", line)
        assert match, line
        publisher = await publish(app.base_url, match[1].removeprefix(app.base_url), token=match[2])
        try:
            out, err = await asyncio.wait_for(example.communicate(), 30)
        finally:
            await publisher.vanish()
        assert example.returncode == 0, err.decode()
        assert out.decode() == f"listening to {publisher.session_id}\n"
        assert app.sessions.get(publisher.session_id).session.listening


async def test_the_backend_example_names_the_reason_of_a_session_closed_before_its_watch(
    tmp_path: pathlib.Path,
) -> None:
    read_end, write_end = full_pipe()
    async with running_server() as app, grpc_stub(app) as stub:
        watch = stub.WatchSessions(pb.WatchSessionsRequest())
        example = await start_example(app.grpc_target, tmp_path, stdout=write_end)
        os.close(write_end)
        created = await next_event(watch, 30)
        # The example is stuck printing the WHIP URL: its session closes before it can watch it.
        await stub.EndSession(pb.EndSessionRequest(session_id=created.session_id))
        printed = asyncio.create_task(asyncio.to_thread(read_to_end, read_end))
        _, err = await asyncio.wait_for(example.communicate(), 30)
        watch.cancel()
        assert b"publish to" in await printed
    assert example.returncode == 1
    assert err.decode().strip().splitlines()[-1] == "session closed: API_END"
