"""The client commands as a user runs them: real processes against a real server."""

from __future__ import annotations

import asyncio
import json
import pathlib
import signal
import sys
import wave

from media.session import SessionState
from media.v1 import media_pb2 as pb
from tests.listening import fell_silent, listening, loud, tone
from tests.support import SPEECH, eventually, grpc_stub, running_server

HARK = [sys.executable, "-m", "media"]


async def run(*args: str, timeout: float = 20) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *HARK, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_publish_sessions_and_watch() -> None:
    async with running_server() as app:
        target = app.grpc_target
        publisher = await asyncio.create_subprocess_exec(
            *HARK,
            "publish",
            str(SPEECH),
            "--url",
            app.base_url + "/whip",
            "--ice-address",
            "127.0.0.1",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert publisher.stdout is not None
        first = (await asyncio.wait_for(publisher.stdout.readline(), 20)).decode()
        assert first.startswith("session ") and "publishing" in first
        session_id = first.split()[1]
        await app.registry.wait_ready(session_id)

        code, table, _ = await run("sessions", "--target", target)
        assert code == 0
        header, row = table.splitlines()[:2]
        assert header.split()[:3] == ["SESSION", "STATE", "LISTENING"]
        assert row.split()[:2] == [session_id, "READY"]

        code, listed, _ = await run("sessions", "--target", target, "--json")
        assert json.loads(listed.splitlines()[0])["id"] == session_id

        watcher = await asyncio.create_subprocess_exec(
            *HARK,
            "watch",
            session_id,
            "--target",
            target,
            "--json",
            stdout=asyncio.subprocess.PIPE,
        )
        assert watcher.stdout is not None
        snapshot = json.loads(await asyncio.wait_for(watcher.stdout.readline(), 20))
        assert snapshot["snapshot"]["session"]["state"] == "READY"

        publisher.send_signal(signal.SIGINT)
        await asyncio.wait_for(publisher.wait(), 20)
        rest, _ = await asyncio.wait_for(watcher.communicate(), 20)
        closed = json.loads(rest.decode().splitlines()[-1])
        assert closed["stateChanged"]["closeReason"] == "CLIENT_DELETE"
        assert watcher.returncode == 0
        assert app.registry.lookup(session_id).session.state is SessionState.CLOSED


async def test_client_commands_report_problems_plainly() -> None:
    async with running_server(token="cli-test-token-1") as app:
        code, _, err = await run("sessions", "--target", app.grpc_target)
        assert code == 1 and "bearer token" in err
        code, _, err = await run(
            "watch", "nope", "--target", app.grpc_target, "--token", "cli-test-token-1"
        )
        assert code == 1 and "'nope' not found" in err
        code, _, err = await run("publish", "/no/such/file.ogg", "--url", app.base_url + "/whip")
        assert code == 2 and "cannot read" in err
        code, _, err = await run("publish", str(SPEECH), "--url", app.base_url + "/whip")
        assert code == 1 and "401" in err


async def test_play_a_file_to_a_player_and_watch_it_play(tmp_path: pathlib.Path) -> None:
    wav = tmp_path / "tone.wav"
    with wave.open(str(wav), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(22050)
        out.writeframes(tone(440, 0.5, 22050))
    async with running_server() as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        watcher = await asyncio.create_subprocess_exec(
            *HARK, "watch", session.id, "--target", app.grpc_target, stdout=asyncio.subprocess.PIPE
        )
        assert watcher.stdout is not None
        await asyncio.wait_for(watcher.stdout.readline(), 20)  # the snapshot
        async with listening(app.base_url, session.id, token=session.token) as player:
            code, out, err = await run("play", session.id, str(wav), "--target", app.grpc_target)
            lines = [(await asyncio.wait_for(watcher.stdout.readline(), 5)).decode()]
            lines.append((await asyncio.wait_for(watcher.stdout.readline(), 5)).decode())
            await eventually(lambda: fell_silent(player.heard), "the player heard the tone end")
        watcher.terminate()
        await watcher.wait()
        code_bad, _, err_bad = await run("play", session.id, "/no/such.wav")
    assert (code, out.strip()) == (0, "pb-1 finished after 500 ms"), err
    assert lines[0].strip().endswith("playback_started: pb-1 to 1 player(s)")
    assert lines[1].strip().endswith("playback_finished: pb-1 after 500 ms")
    assert abs(len(loud(player.heard)) * 20 - 500) <= 40
    assert code_bad == 2 and "cannot read /no/such.wav" in err_bad
