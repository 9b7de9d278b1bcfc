"""The client commands as a user runs them: real processes against a real server."""

from __future__ import annotations

import asyncio
import json
import pathlib
import signal
import socket
import sys
import wave

from media.core.events import CloseReason, SessionState
from media.v1 import media_pb2 as pb
from tests.listening import fell_silent, listening, loud, tone
from tests.support import FIXTURES, SPEECH, eventually, grpc_stub, publish, running_server

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
        await app.sessions.wait_ready(session_id)

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
        assert app.sessions.get(session_id).session.state is SessionState.CLOSED


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


async def test_a_busy_port_is_one_line_naming_the_address_and_exit_code_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for flag, other in (("--http-port", "--grpc-port"), ("--grpc-port", "--http-port")):
            code, _, err = await run("serve", flag, str(port), other, "0")
            assert code == 2, err
            assert len(err.splitlines()) == 1, err
            assert f"127.0.0.1:{port}" in err and "already in use" in err


async def test_a_serve_usage_error_shows_serve_s_usage() -> None:
    code, _, err = await run("serve", "--token", "short")
    assert code == 2
    assert err.startswith("usage: hark serve ")
    assert "--token must be at least 8 characters" in err


async def test_watch_says_at_once_that_it_cannot_reach_the_target_then_gives_up_naming_it() -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{closed.getsockname()[1]}"
        watcher = await asyncio.create_subprocess_exec(
            *HARK, "watch", "--target", target, "--retries", "3", stderr=asyncio.subprocess.PIPE
        )
        assert watcher.stderr is not None
        first = (await asyncio.wait_for(watcher.stderr.readline(), 20)).decode()
        assert watcher.returncode is None, "it said so only when it gave up"
        assert first.startswith(f"hark watch: cannot reach {target} (")
        assert first.rstrip().endswith("; still trying")
        rest = (await asyncio.wait_for(watcher.stderr.read(), 60)).decode()
        assert await watcher.wait() == 1
    last = rest.strip().splitlines()[-1]
    assert last.startswith(f"hark watch: gave up reconnecting to {target} after 3 attempts")
    assert "(last error: " in last


async def test_publish_mistakes_each_get_one_sentence_saying_what_to_do() -> None:
    async with running_server() as app:
        host = app.base_url.removeprefix("http://")
        mistakes = [
            (host + "/whip", str(SPEECH), 2, "is not an http:// or https:// URL"),
            (app.base_url + "/wrong", str(SPEECH), 1, f"Hark's is {app.base_url}/whip"),
            ("http://" + app.grpc_target + "/whip", str(SPEECH), 1, "is it Hark's gRPC port?"),
            (app.base_url + "/whip", str(FIXTURES / "speech.json"), 2, "does not recognise it"),
        ]
        for url, path, expected_code, sentence in mistakes:
            code, _, err = await run("publish", path, "--url", url)
            assert (code, len(err.splitlines())) == (expected_code, 1), err
            assert sentence in err, err
            assert "Errno" not in err and "\\x00" not in err, err


async def test_sigterm_to_publish_deletes_the_session_as_ctrl_c_does() -> None:
    async with running_server() as app:
        publisher = await asyncio.create_subprocess_exec(
            *HARK,
            "publish",
            str(SPEECH),
            "--url",
            app.base_url + "/whip",
            "--ice-address",
            "127.0.0.1",
            stdout=asyncio.subprocess.PIPE,
        )
        assert publisher.stdout is not None
        first = (await asyncio.wait_for(publisher.stdout.readline(), 20)).decode()
        session_id = first.split()[1]
        await app.sessions.wait_ready(session_id)
        publisher.terminate()
        rest, _ = await asyncio.wait_for(publisher.communicate(), 20)
        assert "session closed (DELETE 200)" in rest.decode()
        session = app.sessions.get(session_id).session
        assert session.state is SessionState.CLOSED
        assert session.close_reason is CloseReason.CLIENT_DELETE


async def test_listen_from_the_cli_makes_watch_show_speech() -> None:
    async with running_server() as app:
        publisher = await publish(app.base_url)
        try:
            watcher = await asyncio.create_subprocess_exec(
                *HARK, "watch", publisher.session_id, "--target", app.grpc_target,
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert watcher.stdout is not None
            await asyncio.wait_for(watcher.stdout.readline(), 20)  # the snapshot
            code, out, err = await run("listen", publisher.session_id, "--target", app.grpc_target)
            assert (code, out) == (0, f"{publisher.session_id} listening on (READY)\n"), err
            seen: list[str] = []
            async with asyncio.timeout(30):
                while not any("speech_ended" in line for line in seen):
                    seen.append((await watcher.stdout.readline()).decode())
            assert any(line.rstrip().endswith("listening_changed: on") for line in seen)
            assert any("speech_started: segment" in line for line in seen)
            code, out, _ = await run(
                "listen", publisher.session_id, "--stop", "--target", app.grpc_target
            )
            assert (code, out) == (0, f"{publisher.session_id} listening off (READY)\n")
            watcher.terminate()
            await watcher.wait()
        finally:
            await publisher.vanish()
        code, _, err = await run("listen", "nope", "--target", app.grpc_target)
        assert code == 1 and "nope" in err


async def test_audio_prints_each_segment_and_writes_the_speech_to_a_wav_file(
    tmp_path: pathlib.Path,
) -> None:
    out = tmp_path / "speech.wav"
    async with running_server() as app, grpc_stub(app) as stub:
        publisher = await publish(app.base_url)
        sid = publisher.session_id
        try:
            reader = await asyncio.create_subprocess_exec(
                *HARK, "audio", sid, "--target", app.grpc_target, "--chunk-ms", "200",
                "--out", str(out), stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert reader.stdout is not None
            await eventually(
                lambda: app.metrics.registry.get_sample_value("hark_audio_subscribers") == 1,
                "hark audio subscribes",
            )
            await stub.StartListening(
                pb.StartListeningRequest(session_id=sid, wait_for_ready=True), timeout=10
            )
            lines: list[str] = []
            async with asyncio.timeout(30):
                while sum("ended at" in line for line in lines) < 2:
                    lines.append((await reader.stdout.readline()).decode())
            await stub.EndSession(pb.EndSessionRequest(session_id=sid))
            rest, _ = await asyncio.wait_for(reader.communicate(), 20)
        finally:
            await publisher.vanish()
        code, _, err = await run(
            "audio", sid, "--target", app.grpc_target, "--chunk-ms", "300", timeout=20
        )
    assert reader.returncode == 0
    assert lines[0].startswith("segment 1: speech at ")
    assert "(SILENCE)" in lines[1] and lines[1].startswith("segment 1: ended at ")
    summary = rest.decode().splitlines()[-1]
    assert summary.startswith(f"{sid}: ") and "ms of audio in" in summary
    audio_ms = int(summary.split()[1])
    with wave.open(str(out)) as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (1, 16000)
        assert wav.getnframes() == audio_ms * 16
    chunks = int(summary.split(" in ")[1].split()[0])
    assert chunks < audio_ms / 100  # 200 ms chunks, but the ends of segments
    assert code == 1 and "chunk_ms must be 0 or 20..200, got 300" in err
