"""Metrics an operator looks for first, read over a real scrape of a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from media import __version__
from media.v1 import media_pb2 as pb
from tests.integration.test_operations import scrape, value
from tests.listening import hold_open, play_requests, tone
from tests.support import collect_until_closed, eventually, grpc_stub, publish, running_server

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape_until(url: str, condition: Callable[[Samples], bool]) -> Samples:
    async with asyncio.timeout(20):
        while not condition(samples := await scrape(url)):
            await asyncio.sleep(0.1)
    return samples


async def test_build_info_and_no_created_series() -> None:
    async with running_server() as app:
        samples = await scrape(app.base_url + "/metrics")
    assert value(samples, "hark_build_info", version=__version__) == 1
    assert not [name for name, _ in samples if name.endswith("_created")]


async def test_whip_post_latency_packets_bytes_and_playback_queue_depth() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        url = app.base_url + "/metrics"
        before = await scrape(url)
        publisher = await publish(app.base_url)
        sid = publisher.session_id
        await app.sessions.wait_ready(sid)
        receiving = await scrape_until(
            url, lambda s: value(s, "hark_rtp_packets_received_total") > 50
        )

        release = asyncio.Event()
        five_seconds = play_requests(sid, tone(440, 5.0))
        playing = asyncio.ensure_future(stub.PlayAudio(hold_open(five_seconds, release)))
        queued = await scrape_until(url, lambda s: value(s, "hark_playback_queued_seconds") >= 2)
        release.set()
        await asyncio.wait_for(stub.StopPlayback(pb.StopPlaybackRequest(session_id=sid)), 10)
        await asyncio.wait_for(playing, 10)
        assert await publisher.delete() == 200
        await publisher.vanish()
        after = await scrape(url)

    assert value(before, "hark_whip_post_duration_seconds_count") == 0
    assert value(after, "hark_whip_post_duration_seconds_count") == 1
    assert value(after, "hark_whip_post_duration_seconds_sum") > 0

    assert value(before, "hark_rtp_packets_received_total") == 0
    packets = value(receiving, "hark_rtp_packets_received_total")
    assert value(receiving, "hark_received_bytes_total") > packets * 12  # an RTP header each
    assert value(after, "hark_rtp_packets_received_total") >= packets, "a counter never goes down"

    assert value(before, "hark_playback_queued_seconds") == 0
    assert 2 <= value(queued, "hark_playback_queue_max_seconds") <= 5
    assert value(after, "hark_playback_queued_seconds") == 0


async def test_rtp_jitter_and_loss_are_read_from_the_receivers_at_each_scrape() -> None:
    async with running_server() as app:
        url = app.base_url + "/metrics"
        publisher = await publish(app.base_url)
        await app.sessions.wait_ready(publisher.session_id)
        first = await scrape_until(url, lambda s: value(s, "hark_rtp_jitter_seconds_count") >= 1)
        second = await scrape(url)
        await publisher.delete()
    assert value(second, "hark_rtp_jitter_seconds_count") == (
        value(first, "hark_rtp_jitter_seconds_count") + 1
    ), "one sample per publisher per scrape"
    assert ("hark_rtp_packets_lost_total", ()) in second


async def test_what_a_session_received_counts_even_when_it_closed_between_scrapes() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        url = app.base_url + "/metrics"
        publisher = await publish(app.base_url)
        await app.sessions.wait_ready(publisher.session_id)
        watch = stub.WatchSession(pb.WatchSessionRequest(session_id=publisher.session_id))
        await publisher.delete()
        await collect_until_closed(watch)
        released = "the closed session released its publisher"
        await eventually(lambda: app.sessions.get(publisher.session_id).publisher is None, released)
        after = await scrape(url)
    assert value(after, "hark_rtp_packets_received_total") > 0
    assert value(after, "hark_received_bytes_total") > 0
