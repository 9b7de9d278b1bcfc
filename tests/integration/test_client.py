"""The Python SDK against the real server, including a connection cut in the middle of a watch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from media.client.hark_client import Backoff, HarkClient
from media.errors import InvalidRequest, NotReady, SessionClosed, SessionNotFound, Unauthorized
from media.v1 import media_pb2 as pb
from tests.listening import fell_silent, listening, loud, tone
from tests.support import eventually, publish, running_server


class Relay:
    """A TCP relay on 127.0.0.1 the test controls: ``cut()`` drops every open connection."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.accepted = 0

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self.cut()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        self._writers |= {writer, up_writer}
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()

    async def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)


async def test_a_watch_survives_a_cut_connection_without_losing_or_repeating_events() -> None:
    async with running_server() as app, Relay(app.grpc_port) as relay:
        fast = Backoff(initial=0.05, maximum=0.5)
        async with HarkClient(f"127.0.0.1:{relay.port}", backoff=fast) as hark:
            publisher = await publish(app.base_url)
            sid = publisher.session_id
            try:
                await hark.start_listening(sid, wait_for_ready=True, timeout=10)
                seen: list[pb.SessionEvent] = []
                stop_each = asyncio.Event()

                async def consume() -> None:
                    async for event in hark.watch(sid, since_revision=1):
                        seen.append(event)
                        if event.HasField("listening_changed"):
                            stop_each.set()

                watcher = asyncio.ensure_future(consume())
                async with asyncio.timeout(10):
                    await stop_each.wait()
                for round_ in range(3):
                    await relay.cut()  # events below happen while the watch is disconnected
                    app.sessions.stop_listening(sid)
                    app.sessions.get(sid).start_listening()
                    await eventually(
                        lambda: toggles(seen) == 1 + 2 * (round_ + 1),  # noqa: B023
                        f"the watch reconnected and caught up after cut {round_ + 1}",
                    )
                await hark.end_session(sid)
                async with asyncio.timeout(10):
                    await watcher
                reconnects = relay.accepted - 1
            finally:
                await publisher.vanish()
    assert reconnects >= 3, "the relay never cut the watch"
    revisions = [e.revision for e in seen]
    assert revisions == list(range(2, revisions[-1] + 1)), revisions
    assert seen[-1].state_changed.state == pb.CLOSED
    listening = [e.listening_changed.listening for e in seen if e.HasField("listening_changed")]
    assert listening == [True] + [False, True] * 3


def toggles(seen: list[pb.SessionEvent]) -> int:
    return sum(event.HasField("listening_changed") for event in seen)


async def test_wait_ready_returns_the_ready_session_or_raises_clearly() -> None:
    async with running_server() as app:
        async with HarkClient(app.grpc_target) as hark:
            session = await hark.create_session(metadata={"user": "ada"})
            with pytest.raises(TimeoutError):
                await hark.wait_ready(session.id, timeout=0.3)
            publisher = await publish(app.base_url, f"/whip/{session.id}", token=session.token)
            try:
                ready = await hark.wait_ready(session.id, timeout=10)
                assert ready.state == pb.READY and ready.metadata["user"] == "ada"
            finally:
                await publisher.vanish()

            doomed = await hark.create_session()
            waiting = asyncio.ensure_future(hark.wait_ready(doomed.id, timeout=10))
            # the waiter watches the session: it is counted once it is waiting
            live = app.sessions.get(doomed.id)
            await eventually(lambda: live.watcher_count == 1, "wait_ready is waiting")
            await hark.end_session(doomed.id, "changed my mind")
            with pytest.raises(SessionClosed) as closed:
                await waiting
            assert (closed.value.reason, closed.value.detail) == ("API_END", "changed my mind")


async def test_errors_are_hark_errors_not_grpc_errors() -> None:
    async with running_server(token="client-test-token") as app:
        async with HarkClient(app.grpc_target, token="client-test-token") as hark:
            with pytest.raises(SessionNotFound):
                await hark.get_session("nope")
            with pytest.raises(InvalidRequest, match="ttl_seconds"):
                await hark.create_session(ttl_seconds=-1)
            session = await hark.create_session()
            with pytest.raises(NotReady) as early:
                await hark.start_listening(session.id, wait_for_ready=False)
            assert early.value.state == "NEW"
            with pytest.raises(TimeoutError):
                await hark.start_listening(session.id, wait_for_ready=True, timeout=0.3)
            assert [s.id for s in await hark.list_sessions()] == [session.id]
            await hark.end_session(session.id)
            with pytest.raises(SessionClosed):
                await hark.start_listening(session.id)
        async with HarkClient(app.grpc_target, token="wrong-token-entirely") as intruder:
            with pytest.raises(Unauthorized):
                await intruder.list_sessions()
            with pytest.raises(Unauthorized):
                async for _ in intruder.watch():
                    pass


async def test_play_reaches_a_player_and_stop_playback_cuts_it() -> None:
    async with running_server() as app, HarkClient(app.grpc_target) as hark:
        session = await hark.create_session()
        async with listening(app.base_url, session.id, token=session.token) as player:
            chunks = [tone(440, 1.0, 16000)[i : i + 640] for i in range(0, 32000, 640)]
            reply = await hark.play(session.id, chunks, 16000, playback_id="hello")
            assert (reply.playback_id, reply.played_ms, reply.interrupted) == ("hello", 1000, False)
            await eventually(lambda: fell_silent(player.heard), "the player heard the tone end")
            heard_first = len(loud(player.heard))

            async def endless() -> AsyncIterator[bytes]:
                while True:
                    yield tone(440, 0.1)
                    await asyncio.sleep(0.05)  # a TTS engine producing audio faster than real time

            talking = asyncio.ensure_future(hark.play(session.id, endless(), 48000))
            await eventually(
                lambda: len(loud(player.heard)) >= heard_first + 10, "the player hears more"
            )
            assert await hark.stop_playback(session.id) == ["pb-1"]
            cut = await asyncio.wait_for(talking, 2)
            assert cut.interrupted and cut.interrupt_reason == pb.STOP_PLAYBACK
            assert cut.played_ms >= 200  # at least the 10 frames the player heard
            await eventually(lambda: fell_silent(player.heard), "the player hears the cut")
        with pytest.raises(InvalidRequest, match="sample_rate"):
            await hark.play(session.id, [b""], 96000)
        assert 48 <= heard_first <= 52, "the first tone was not heard whole"
