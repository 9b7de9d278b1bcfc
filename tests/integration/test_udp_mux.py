"""``--udp-port`` and ``--ice-public-address`` with real aiortc peers over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import socket
import struct
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
from aiortc import RTCPeerConnection

from media.v1 import media_pb2 as pb
from media.v1 import media_pb2_grpc
from tests.integration.test_operations import scrape, value
from tests.listening import fell_silent, listening, play_requests, requests_of, tone
from tests.support import (
    HarkProcess,
    Publisher,
    eventually,
    grpc_stub,
    next_event,
    publish,
    running_server,
)

CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ (\w+)", re.M | re.I)
DROPPED = "hark_udp_mux_dropped_total"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def host_candidates(sdp: str) -> list[tuple[str, int]]:
    return [(m[1], int(m[2])) for m in CANDIDATE.finditer(sdp) if m[3].lower() == "host"]


def ice_ufrag(sdp: str) -> str:
    match = re.search(r"^a=ice-ufrag:(\S+)", sdp, re.M)
    assert match
    return match[1]


def stun_request(username: str) -> bytes:
    value_bytes = username.encode()
    padded = value_bytes + b"\0" * (-len(value_bytes) % 4)
    attribute = struct.pack("!HH", 0x0006, len(value_bytes)) + padded
    header = struct.pack("!HH", 0x0001, len(attribute)) + b"\x21\x12\xa4\x42"
    return header + secrets.token_bytes(12) + attribute


async def state_reached(watch: Any, state: int) -> None:
    while True:
        event = await next_event(watch, timeout=30)
        if event.HasField("state_changed") and event.state_changed.state == state:
            return
        assert not (event.HasField("state_changed") and event.state_changed.state == pb.CLOSED), (
            f"closed: {event.state_changed.close_detail}"
        )


async def speech_started(watch: Any) -> None:
    while not (await next_event(watch, timeout=30)).HasField("speech_started"):
        pass


async def ready_and_listening(stub: Any, publisher: Publisher) -> Any:
    watch = stub.WatchSession(pb.WatchSessionRequest(session_id=publisher.session_id))
    await stub.StartListening(
        pb.StartListeningRequest(session_id=publisher.session_id, wait_for_ready=True), timeout=60
    )
    return watch


def media_udp_sockets(pid: int | str) -> int:
    """UDP sockets the process holds (its fds whose inode is a UDP socket)."""
    inodes = set()
    for table in ("udp", "udp6"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/net/{table}") as lines:
            next(lines)
            inodes.update(line.split()[9] for line in lines)
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held += 1
    return held


# --ice-public-address


async def test_the_public_address_is_announced_while_the_socket_stays_bound_locally() -> None:
    async with (
        running_server(ice_addresses=("127.0.0.2",), ice_public_addresses=("127.0.0.1",)) as app,
        grpc_stub(app) as stub,
    ):
        publisher = await publish(app.base_url)
        assert {host for host, _ in host_candidates(publisher.answer)} == {"127.0.0.1"}
        # nothing listens on 127.0.0.1 at that port: the pair forms from the bound 127.0.0.2
        await ready_and_listening(stub, publisher)
        await publisher.delete()
        await publisher.vanish()


async def test_the_public_address_is_announced_on_the_shared_port() -> None:
    port = free_udp_port()
    async with (
        running_server(
            udp_port=port, ice_addresses=("127.0.0.2",), ice_public_addresses=("127.0.0.1",)
        ) as app,
        grpc_stub(app) as stub,
    ):
        publisher = await publish(app.base_url)
        assert host_candidates(publisher.answer) == [("127.0.0.1", port)]
        await ready_and_listening(stub, publisher)
        await publisher.delete()
        await publisher.vanish()


async def test_local_addresses_of_a_family_make_one_public_candidate_on_the_shared_port() -> None:
    port = free_udp_port()
    async with (
        running_server(
            udp_port=port,
            ice_addresses=("127.0.0.2", "127.0.0.3"),
            ice_public_addresses=("127.0.0.1",),
        ) as app,
        grpc_stub(app) as stub,
    ):
        publisher = await publish(app.base_url)
        assert host_candidates(publisher.answer) == [("127.0.0.1", port)]
        await ready_and_listening(stub, publisher)
        await publisher.delete()
        await publisher.vanish()


# --udp-port


async def test_every_local_address_of_a_family_is_served_by_the_one_wildcard_socket() -> None:
    port = free_udp_port()
    async with (
        running_server(udp_port=port, ice_addresses=("127.0.0.1", "127.0.0.2")) as app,
        grpc_stub(app) as stub,
    ):
        assert app.ice_plan.mux is not None and app.ice_plan.mux.sockets() == 1
        publisher = await publish(app.base_url)
        assert sorted(host_candidates(publisher.answer)) == [
            ("127.0.0.1", port),
            ("127.0.0.2", port),
        ]
        await ready_and_listening(stub, publisher)
        await publisher.delete()
        await publisher.vanish()


@contextlib.asynccontextmanager
async def hark_process(*args: str) -> AsyncIterator[tuple[HarkProcess, Any]]:
    async with HarkProcess(*args) as hark:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{hark.grpc_port}") as channel:
            yield hark, media_pb2_grpc.MediaServiceStub(channel)


async def test_ipv6_sessions_share_their_own_socket_and_announce_their_own_public_address() -> None:
    port = free_udp_port()
    async with (
        running_server(
            udp_port=port,
            ice_addresses=("::1",),
            ice_public_addresses=("192.0.2.1", "::1"),
        ) as app,
        grpc_stub(app) as stub,
    ):
        assert app.ice_plan.mux is not None and app.ice_plan.mux.sockets() == 1
        publisher = await publish(app.base_url)
        assert host_candidates(publisher.answer) == [("::1", port)]
        await ready_and_listening(stub, publisher)
        await publisher.delete()
        await publisher.vanish()


async def test_a_busy_udp_port_stops_hark_with_a_message_that_names_it() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        hark = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "media", "serve", "--http-port", "0", "--grpc-port", "0"),
            *("--udp-port", str(port), "--ice-address", "127.0.0.1"),
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(hark.communicate(), 30)
    assert hark.returncode != 0
    assert f"cannot listen for media (--udp-port) on 127.0.0.1:{port}" in err.decode()


async def test_twenty_publishers_and_a_player_share_one_socket() -> None:
    port = free_udp_port()
    async with hark_process("--udp-port", str(port), "--ice-address", "127.0.0.1") as (hark, stub):
        assert hark.proc is not None
        base_url = f"http://127.0.0.1:{hark.http_port}"
        sockets_before = media_udp_sockets(hark.proc.pid)
        publishers = list(await asyncio.gather(*(publish(base_url) for _ in range(20))))
        try:
            for publisher in publishers:
                assert host_candidates(publisher.answer) == [("127.0.0.1", port)]
            watches = await asyncio.gather(*(ready_and_listening(stub, p) for p in publishers))
            await asyncio.gather(*(speech_started(w) for w in watches))
            first = publishers[0].session_id
            async with listening(base_url, first) as player:
                assert host_candidates(player.answer) == [("127.0.0.1", port)]
                await stub.PlayAudio(requests_of(play_requests(first, tone(440, 0.5))), timeout=30)
                await eventually(lambda: fell_silent(player.heard), "the player heard the tone")
                assert media_udp_sockets(hark.proc.pid) == sockets_before == 1
        finally:
            await asyncio.gather(*(p.vanish() for p in publishers))


async def answered_but_never_connected(base_url: str) -> tuple[RTCPeerConnection, str]:
    """A WHIP session whose publisher never applies the answer: Hark waits for its checks."""
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            base_url + "/whip", data=pc.localDescription.sdp, headers=headers
        ) as r:
            assert r.status == 201
            return pc, await r.text()


async def test_a_delete_leaves_the_others_flowing_and_spoofed_packets_reach_no_session() -> None:
    port = free_udp_port()
    async with (
        running_server(udp_port=port, ice_addresses=("127.0.0.1",)) as app,
        grpc_stub(app) as stub,
    ):
        first, second = await asyncio.gather(publish(app.base_url), publish(app.base_url))
        watches = await asyncio.gather(*(ready_and_listening(stub, p) for p in (first, second)))
        assert await first.delete() == 200
        await first.vanish()
        await speech_started(watches[1])

        metrics = app.base_url + "/metrics"
        before = await scrape(metrics)
        valid_ufrag = f"{ice_ufrag(second.answer)}:{ice_ufrag(second.pc.localDescription.sdp)}"
        offer, answer = await answered_but_never_connected(app.base_url)
        unconnected_ufrag = f"{ice_ufrag(answer)}:{ice_ufrag(offer.localDescription.sdp)}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as spoofer:
            spoofer.sendto(stun_request(valid_ufrag), ("127.0.0.1", port))
            spoofer.sendto(stun_request(unconnected_ufrag), ("127.0.0.1", port))
            spoofer.sendto(stun_request("nobody:here"), ("127.0.0.1", port))
            for _ in range(3):
                spoofer.sendto(secrets.token_bytes(100), ("127.0.0.1", port))
        await offer.close()

        async def dropped(cause: str) -> float:
            return value(await scrape(metrics), DROPPED, cause=cause) - value(
                before, DROPPED, cause=cause
            )

        async def all_counted() -> bool:
            return (
                await dropped("wrong_address") == 1
                and await dropped("bad_integrity") == 1
                and await dropped("unknown_ufrag") == 1
                and await dropped("unknown_address") == 3
            )

        await eventually(all_counted, "every spoofed datagram dropped and counted")
        await speech_started(watches[1])  # the next utterance: the session still flows
        await second.delete()
        await second.vanish()


async def test_a_churn_of_sessions_leaves_nothing_in_the_tables() -> None:
    port = free_udp_port()
    sessions, batch = 300, 10
    async with running_server(
        udp_port=port, ice_addresses=("127.0.0.1",), max_sessions=1000
    ) as app:
        mux = app.ice_plan.mux
        assert mux is not None
        for _ in range(sessions // batch):
            publishers = await asyncio.gather(*(publish(app.base_url) for _ in range(batch)))
            for publisher in publishers:
                pc = publisher.pc
                await eventually(lambda pc=pc: pc.connectionState == "connected", "connected")
            assert mux.entries() > 0
            for publisher in publishers:
                assert await publisher.delete() == 200
                await publisher.vanish()
        await eventually(lambda: mux.entries() == 0, "the tables are empty", timeout=30)
