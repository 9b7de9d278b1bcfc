"""``hark serve --workers 2``: real process trees, real aiortc publishers, one public port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pkgutil
import re
import shutil
import signal
import socket
import sys

import aiohttp
import grpc
import pytest

from media.core.session_ids import Owner
from media.v1 import media_pb2 as pb
from media.v1 import media_pb2_grpc
from tests.integration.test_browser_api import read_sse
from tests.support import collect_until_closed, events_until, eventually, next_event, publish
from tests.workers_support import (
    NODE,
    HarkWorkers,
    private_stub,
    publish_on_every_worker,
    scrape,
    scrape_text,
    worker_of,
)


async def wait_ready(hark: HarkWorkers, session_id: str) -> pb.Session:
    """The session once READY, asked of its owner through the owner's private socket."""
    async with private_stub(hark, worker_of(session_id)) as owner:
        request = pb.StartListeningRequest(session_id=session_id, wait_for_ready=True)
        session = await owner.StartListening(request, timeout=20)
    assert session.state == pb.READY
    return session


async def promtool_check_metrics(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        reason = "promtool is not installed (Debian package prometheus; make deps-debian)"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    checking = await asyncio.create_subprocess_exec(
        promtool,
        *("check", "metrics"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(checking.communicate(text.encode()), 60)
    assert checking.returncode == 0, output.decode()


@pytest.mark.parametrize("where", [(), ("--metrics-port", "0")], ids=["http-port", "metrics-port"])
async def test_sessions_spread_over_both_workers_and_metrics_cover_both(
    where: tuple[str, ...],
) -> None:
    async with HarkWorkers(*where) as hark:
        publishers = await publish_on_every_worker(hark)
        try:
            for publisher in publishers:
                await wait_ready(hark, publisher.session_id)
            per_worker = [
                sum(1 for p in publishers if worker_of(p.session_id) == k) for k in (0, 1)
            ]

            async def ready_in_metrics() -> bool:
                samples = await scrape(hark.metrics_url)
                ready = [
                    samples.get(
                        ("hark_sessions", frozenset({("state", "READY"), ("worker", str(k))})),
                        0.0,
                    )
                    for k in (0, 1)
                ]
                return ready == per_worker

            # Whichever worker takes each scrape, it reports both.
            for _ in range(4):
                await eventually(ready_in_metrics, f"READY sessions per worker {per_worker}")
            samples = await scrape(hark.metrics_url)
            assert samples[("hark_worker_up", frozenset({("worker", "0")}))] == 1
            assert samples[("hark_worker_up", frozenset({("worker", "1")}))] == 1
            await promtool_check_metrics(await scrape_text(hark.metrics_url))
            async with aiohttp.ClientSession() as http:
                for _ in range(8):
                    async with http.get(hark.base_url + "/healthz") as response:
                        assert response.status == 200
        finally:
            for publisher in publishers:
                await publisher.vanish()


async def test_a_killed_worker_is_restarted_and_its_sessions_answer_node_lost() -> None:
    async with HarkWorkers("--log-level", "INFO") as hark:
        publishers = await publish_on_every_worker(hark)
        try:
            for publisher in publishers:
                await wait_ready(hark, publisher.session_id)
            lost = [p.session_id for p in publishers if worker_of(p.session_id) == 1]
            kept = [p.session_id for p in publishers if worker_of(p.session_id) == 0]
            async with private_stub(hark, 1) as worker1:
                pre_created = await worker1.CreateSession(pb.CreateSessionRequest())
            lost.append(pre_created.id)

            mark = len(hark.log)
            os.kill(hark.pids[1], signal.SIGKILL)
            killed = re.compile(r"worker 1 exited \(killed by SIGKILL\)")
            await hark.wait_for_log(killed, after=mark)
            await hark.wait_for_log(re.compile(r"worker 1 serving"), after=mark)

            async with private_stub(hark, 1) as worker1:
                for session_id in lost:
                    session = await worker1.GetSession(pb.GetSessionRequest(session_id=session_id))
                    assert session.state == pb.CLOSED
                    assert session.close_reason == pb.NODE_LOST
                    assert "worker 1" in session.close_detail
                watch = worker1.WatchSession(pb.WatchSessionRequest(session_id=lost[0]))
                (snapshot,) = await collect_until_closed(watch)
                assert snapshot.snapshot.session.close_reason == pb.NODE_LOST
            async with private_stub(hark, 0) as worker0:
                for session_id in kept:
                    session = await worker0.GetSession(pb.GetSessionRequest(session_id=session_id))
                    assert session.state == pb.READY

            # The public port kept serving, and takes new sessions on the new worker 1 too.
            async with aiohttp.ClientSession() as http:
                async with http.get(hark.base_url + "/healthz") as response:
                    assert response.status == 200
            publishers += await publish_on_every_worker(hark)
            for publisher in publishers[-2:]:
                await wait_ready(hark, publisher.session_id)
            assert "Traceback" not in hark.text
        finally:
            for publisher in publishers:
                await publisher.vanish()


async def test_sigterm_drains_every_worker_and_the_parent_exits_0() -> None:
    async with HarkWorkers("--drain-timeout", "2", "--log-level", "INFO") as hark:
        publishers = await publish_on_every_worker(hark)
        try:
            watches = []
            async with contextlib.AsyncExitStack() as channels:
                for publisher in publishers[-2:]:
                    await wait_ready(hark, publisher.session_id)
                    target = hark.private_grpc(worker_of(publisher.session_id))
                    channel = await channels.enter_async_context(grpc.aio.insecure_channel(target))
                    stub = media_pb2_grpc.MediaServiceStub(channel)
                    watch = stub.WatchSession(
                        pb.WatchSessionRequest(session_id=publisher.session_id)
                    )
                    await next_event(watch)
                    watches.append(watch)

                assert hark.proc is not None
                hark.proc.send_signal(signal.SIGTERM)
                async with aiohttp.ClientSession() as http:

                    async def draining() -> bool:
                        async with http.get(hark.base_url + "/readyz") as response:
                            return response.status == 503

                    # Both workers drain: every answer through the public port says so.
                    await eventually(draining, "/readyz turns 503")
                    for _ in range(4):
                        assert await draining()
                for watch in watches:
                    closed = (await collect_until_closed(watch))[-1]
                    assert closed.state_changed.close_reason == pb.SHUTDOWN
                code = await hark.wait(timeout=30)
        finally:
            for publisher in publishers:
                await publisher.vanish()
    assert code == 0, hark.text
    assert len(re.findall(r"draining: [1-9]\d* live sessions", hark.text)) == 2, hark.text
    assert not hark.run_dir.exists()
    for pid in hark.pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 0)
            raise AssertionError(f"worker pid {pid} outlived the parent")
    assert "Traceback" not in hark.text


async def test_an_id_naming_a_worker_the_host_does_not_have_is_not_found() -> None:
    missing = Owner(NODE, 7).new_session_id()
    async with HarkWorkers() as hark:
        async with grpc.aio.insecure_channel(hark.grpc_target) as channel:
            stub = media_pb2_grpc.MediaServiceStub(channel)
            try:
                await stub.GetSession(pb.GetSessionRequest(session_id=missing))
                raise AssertionError("GetSession found a session of worker 7 of 2")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND
                assert missing in (error.details() or "")
        async with aiohttp.ClientSession() as http:
            async with http.delete(f"{hark.base_url}/whip/{missing}") as response:
                assert response.status == 404
                assert missing in await response.text()


def free_udp_pair() -> int:
    """A UDP port P on loopback with P + 1 free as well."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return int(port)
    raise AssertionError("no two consecutive free UDP ports")


async def test_worker_k_takes_udp_port_plus_k() -> None:
    port = free_udp_pair()
    args = ("--udp-port", str(port), "--ice-address", "127.0.0.1")
    async with HarkWorkers(*args) as hark:
        publishers = await publish_on_every_worker(hark)
        try:
            for publisher in publishers:
                expected = port + worker_of(publisher.session_id)
                host_ports = {
                    int(line.split()[5])
                    for line in publisher.answer.splitlines()
                    if line.startswith("a=candidate:") and "typ host" in line
                }
                assert host_ports == {expected}, publisher.answer
                await wait_ready(hark, publisher.session_id)
        finally:
            for publisher in publishers:
                await publisher.vanish()


def has_forwarders() -> bool:
    import media.cluster

    return any(m.name.startswith("forward") for m in pkgutil.iter_modules(media.cluster.__path__))


needs_forwarders = pytest.mark.skipif(not has_forwarders(), reason="needs the forwarders")


@needs_forwarders
async def test_every_session_rpc_works_through_the_public_port() -> None:
    async with HarkWorkers() as hark:
        publishers = await publish_on_every_worker(hark)
        try:
            # One channel is one connection, to one worker: the other worker's session is
            # forwarded.
            async with grpc.aio.insecure_channel(hark.grpc_target) as channel:
                stub = media_pb2_grpc.MediaServiceStub(channel)
                for publisher in publishers[-2:]:
                    sid = publisher.session_id
                    listening = await stub.StartListening(
                        pb.StartListeningRequest(session_id=sid, wait_for_ready=True), timeout=20
                    )
                    assert listening.state == pb.READY and listening.listening
                    assert (await stub.GetSession(pb.GetSessionRequest(session_id=sid))).listening
                    watch = stub.WatchSession(pb.WatchSessionRequest(session_id=sid))
                    audio = stub.StreamAudio(pb.StreamAudioRequest(session_id=sid))
                    chunk = await audio.read()
                    assert isinstance(chunk, pb.AudioChunk) and chunk.session_id == sid
                    await events_until(watch, "speech_ended", timeout=30)
                    audio.cancel()
                    await stub.StopListening(pb.StopListeningRequest(session_id=sid))
                    ended = await stub.EndSession(pb.EndSessionRequest(session_id=sid))
                    assert ended.state == pb.CLOSED and ended.close_reason == pb.API_END
                    closed = (await collect_until_closed(watch))[-1]
                    assert closed.state_changed.close_reason == pb.API_END
        finally:
            for publisher in publishers:
                await publisher.vanish()


@needs_forwarders
async def test_a_pre_created_session_is_published_and_deleted_through_the_public_port() -> None:
    async with HarkWorkers() as hark:
        created: list[pb.Session] = []
        async with grpc.aio.insecure_channel(hark.grpc_target) as channel:
            stub = media_pb2_grpc.MediaServiceStub(channel)
            created.append(await stub.CreateSession(pb.CreateSessionRequest()))
        async with private_stub(hark, 1 - worker_of(created[0].id)) as other:
            created.append(await other.CreateSession(pb.CreateSessionRequest()))
        publishers = []
        try:
            for session in created:
                path = f"/whip/{session.id}"
                publishers.append(await publish(hark.base_url, path, token=session.token))
                await wait_ready(hark, session.id)
                async with aiohttp.ClientSession() as http:
                    url = f"{hark.base_url}/whip/{session.id}/events"
                    auth = {"Authorization": f"Bearer {session.token}"}
                    async with http.get(url, headers=auth) as response:
                        assert response.content_type == "text/event-stream"
                        [(_, snapshot)] = await read_sse(response, 1)
                        assert snapshot["snapshot"]["session"]["state"] == "READY"
            for publisher in publishers:
                assert await publisher.delete() in (200, 204)
                async with private_stub(hark, worker_of(publisher.session_id)) as owner:
                    gone = await owner.GetSession(
                        pb.GetSessionRequest(session_id=publisher.session_id)
                    )
                    assert gone.close_reason == pb.CLIENT_DELETE
        finally:
            for publisher in publishers:
                await publisher.vanish()


@needs_forwarders
async def test_a_lost_session_answers_node_lost_through_the_public_port() -> None:
    async with HarkWorkers() as hark:
        publishers = await publish_on_every_worker(hark)
        try:
            lost = next(p.session_id for p in publishers if worker_of(p.session_id) == 1)
            await wait_ready(hark, lost)
            mark = len(hark.log)
            os.kill(hark.pids[1], signal.SIGKILL)
            await hark.wait_for_log(re.compile(r"worker 1 serving"), after=mark)
            for _ in range(6):  # fresh connections, which land on either worker
                async with grpc.aio.insecure_channel(hark.grpc_target) as channel:
                    stub = media_pb2_grpc.MediaServiceStub(channel)
                    session = await stub.GetSession(pb.GetSessionRequest(session_id=lost))
                    assert session.close_reason == pb.NODE_LOST
        finally:
            for publisher in publishers:
                await publisher.vanish()


async def run_hark(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "media", "serve", "--workers", "2", *args),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, err.decode()


async def test_a_busy_port_or_udp_ports_past_65535_exit_2_with_a_message() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = await run_hark("--http-port", str(port), "--grpc-port", "0")
    assert code == 2
    assert f"cannot listen for HTTP on 127.0.0.1:{port}: the address is already in use" in err
    code, err = await run_hark("--http-port", "0", "--grpc-port", "0", "--udp-port", "65535")
    assert code == 2
    assert "--udp-port with --workers 2 takes UDP ports up to 65536" in err
    assert "Traceback" not in err


async def test_a_worker_that_cannot_start_stops_the_others_and_exits_2() -> None:
    port = free_udp_pair()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port + 1))  # worker 1's media port
        code, err = await run_hark(
            *("--http-port", "0", "--grpc-port", "0", "--udp-port", str(port)),
            *("--ice-address", "127.0.0.1"),
        )
    assert code == 2, err
    assert f"cannot listen for media (--udp-port) on 127.0.0.1:{port + 1}" in err
    assert "worker 1 exited (exit code 2) at start" in err
    for pid in re.findall(r"worker \d serving \(pid (\d+)\)", err):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), 0)
            raise AssertionError(f"worker pid {pid} outlived the supervisor")
