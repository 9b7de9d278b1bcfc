"""The client side of the ``hark`` command: every subcommand but ``serve``."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import time
import wave
from collections.abc import Sequence
from typing import Final, TextIO
from urllib.parse import urljoin, urlsplit

import aiohttp
from google.protobuf import json_format

from media.client.hark_client import Backoff, HarkClient
from media.errors import HarkError
from media.rtc.compat import restrict_host_candidates
from media.v1 import media_pb2 as pb


def _age(session: pb.Session) -> str:
    seconds = max(0, int(time.time() - session.created_time.seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


async def sessions(target: str, token: str | None, include_closed: bool, as_json: bool) -> int:
    async with HarkClient(target, token=token) as hark:
        listed = await hark.list_sessions(include_closed=include_closed)
    if as_json:
        for session in listed:
            print(json_format.MessageToJson(session, indent=None))
        return 0
    rows = [("SESSION", "STATE", "LISTENING", "ORIGIN", "AGE", "REVISION", "CLOSE REASON")]
    for s in listed:
        rows.append(
            (
                s.id,
                pb.SessionState.Name(s.state),
                "yes" if s.listening else "no",
                pb.SessionOrigin.Name(s.origin),
                _age(s),
                str(s.revision),
                pb.CloseReason.Name(s.close_reason) if s.close_reason else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def describe(event: pb.SessionEvent) -> str:
    kind = event.WhichOneof("payload")
    head = f"{event.session_id} r{event.revision} {kind}"
    if kind == "snapshot":
        session = event.snapshot.session
        resync = " (resync)" if event.snapshot.resync else ""
        return f"{head}{resync}: {pb.SessionState.Name(session.state)}"
    if kind == "state_changed":
        change = event.state_changed
        text = f"{head}: {pb.SessionState.Name(change.state)}"
        if change.state == pb.CLOSED:
            text += f" ({pb.CloseReason.Name(change.close_reason)}) {change.close_detail}"
        return text.rstrip()
    if kind == "listening_changed":
        return f"{head}: {'on' if event.listening_changed.listening else 'off'}"
    if kind == "speech_started":
        started = event.speech_started
        return f"{head}: segment {started.segment_id} at {started.start_ms} ms"
    if kind == "speech_ended":
        ended = event.speech_ended
        reason = pb.SpeechEndReason.Name(ended.reason)
        return f"{head}: segment {ended.segment_id}, {ended.duration_ms} ms ({reason})"
    if kind == "playback_started":
        started_pb = event.playback_started
        return f"{head}: {started_pb.playback_id} to {started_pb.players} player(s)"
    if kind == "playback_finished":
        done = event.playback_finished
        return f"{head}: {done.playback_id} after {done.played_ms} ms"
    if kind == "playback_interrupted":
        cut = event.playback_interrupted
        reason = pb.PlaybackInterruptReason.Name(cut.reason)
        return f"{head}: {cut.playback_id} after {cut.played_ms} ms ({reason})"
    return head


class _ReachabilityReport:
    """Tells the user at once when the target cannot be reached, and when it can again."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.unreachable = False

    def failed(self, error: str) -> None:
        if not self.unreachable:
            self.unreachable = True
            print(
                f"hark watch: cannot reach {self.target} ({error}); still trying",
                file=sys.stderr,
                flush=True,
            )

    def connected(self) -> None:
        if self.unreachable:
            self.unreachable = False
            print(f"hark watch: connected to {self.target}", file=sys.stderr, flush=True)


async def watch(
    target: str,
    token: str | None,
    session_id: str | None,
    since: int,
    as_json: bool,
    retries: int | None = 20,
) -> int:
    """Print events as they come; ``retries`` failed reconnects in a row end it (None: never)."""
    report = _ReachabilityReport(target)
    backoff = Backoff(max_attempts=retries)
    async with HarkClient(target, token=token, backoff=backoff) as hark:
        async for event in hark.watch(session_id, since_revision=since, on_retry=report.failed):
            report.connected()
            line = json_format.MessageToJson(event, indent=None) if as_json else describe(event)
            print(line, flush=True)
    return 0


async def listen(target: str, token: str | None, session_id: str, stop: bool, wait: float) -> int:
    """Start (waiting up to ``wait`` seconds for READY; 0: no wait) or stop listening."""
    async with HarkClient(target, token=token) as hark:
        if stop:
            session = await hark.stop_listening(session_id)
        else:
            try:
                session = await hark.start_listening(
                    session_id, wait_for_ready=wait > 0, timeout=wait or None
                )
            except TimeoutError:
                print(f"hark listen: {session_id} was not READY within {wait:g} s", file=sys.stderr)
                return 1
    state = pb.SessionState.Name(session.state)
    print(f"{session.id} listening {'on' if session.listening else 'off'} ({state})", flush=True)
    return 0


class _AudioTally:
    """What ``hark audio`` prints: a line per segment, then the totals."""

    def __init__(self) -> None:
        self.chunks = self.audio_ms = self.dropped_ms = 0
        self._segment_chunks = self._segment_ms = 0

    def audio(self, audio: pb.PcmAudio) -> None:
        self.chunks += 1
        self.audio_ms += audio.duration_ms
        self.dropped_ms += audio.dropped_ms
        self._segment_chunks += 1
        self._segment_ms += audio.duration_ms

    def segment_start(self, start: pb.SegmentStart) -> str:
        self._segment_chunks = self._segment_ms = 0
        return (
            f"segment {start.segment_id}: speech at {start.start_ms} ms, "
            f"audio from {start.audio_start_ms} ms"
        )

    def segment_end(self, end: pb.SegmentEnd) -> str:
        reason = pb.SpeechEndReason.Name(end.reason)
        return (
            f"segment {end.segment_id}: ended at {end.end_ms} ms ({reason}), "
            f"{self._segment_ms} ms of audio in {self._segment_chunks} chunks"
        )

    def summary(self, session_id: str) -> str:
        dropped = f", {self.dropped_ms} ms dropped" if self.dropped_ms else ""
        return f"{session_id}: {self.audio_ms} ms of audio in {self.chunks} chunks{dropped}"


async def audio(
    target: str,
    token: str | None,
    session_id: str,
    *,
    everything: bool,
    sample_rate: int,
    chunk_ms: int,
    out_path: str | None,
) -> int:
    """Read a session's StreamAudio until it closes: a line per segment, the PCM to a WAV file."""
    tally = _AudioTally()
    wav: wave.Wave_write | None = None
    mode = pb.ALL if everything else pb.SPEECH
    try:
        async with HarkClient(target, token=token) as hark:
            async for chunk in hark.stream_audio(session_id, mode, sample_rate, chunk_ms):
                kind = chunk.WhichOneof("payload")
                if kind == "audio":
                    tally.audio(chunk.audio)
                    if out_path is not None and wav is None:
                        wav = _open_wav(out_path, chunk.audio.sample_rate)
                    if wav is not None:
                        wav.writeframes(chunk.audio.pcm)
                elif kind == "segment_start":
                    print(tally.segment_start(chunk.segment_start), flush=True)
                elif kind == "segment_end":
                    print(tally.segment_end(chunk.segment_end), flush=True)
    finally:
        if wav is not None:
            wav.close()
    print(tally.summary(session_id), flush=True)
    return 0


def _open_wav(path: str, rate: int) -> wave.Wave_write:
    wav = wave.open(path, "wb")  # closed by audio() when the stream ends
    wav.setnchannels(1)
    wav.setsampwidth(2)
    wav.setframerate(rate)
    return wav


WHIP_PATH: Final = re.compile(r"/whip(/[^/]+)?/?$")
EXAMPLE_WHIP_URL: Final = "http://127.0.0.1:8080/whip"


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a WHIP endpoint at all, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return (
            f"--url {url} is not an http:// or https:// URL; "
            f"Hark's WHIP endpoint looks like {EXAMPLE_WHIP_URL}"
        )
    return None


def unreadable(path: str, exc: Exception) -> str:
    """One sentence on why PyAV could not open ``path``."""
    import av

    if isinstance(exc, FileNotFoundError):
        return f"cannot read {path}: there is no such file"
    if isinstance(exc, IsADirectoryError):
        return f"cannot read {path}: it is a directory, not an audio file"
    if isinstance(exc, av.FFmpegError) and not isinstance(exc, PermissionError):
        return (
            f"cannot read {path}: FFmpeg does not recognise it as audio "
            f"({exc.strerror}); give an audio file such as .ogg, .wav, .mp3 or .flac"
        )
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot read {path}: {exc.strerror}"
    return f"cannot read {path}: {exc}"


def refusal(url: str, status: int, reason: str, body: str) -> str:
    """One sentence on a WHIP POST answered with something other than 201."""
    parts = urlsplit(url)
    if status == 404 and not WHIP_PATH.search(parts.path):
        return (
            f"{url} is not a WHIP endpoint (404 Not Found): "
            f"Hark's is {parts.scheme}://{parts.netloc}/whip"
        )
    text = f"{status} {reason}: {body.strip()}" if body.strip() else f"{status} {reason}"
    if status == 401:
        return f"{url} refused the offer ({text}); pass the server's token with --token"
    return f"{url} refused the offer ({text})"


def http_failure(url: str, exc: aiohttp.ClientError) -> str:
    """One sentence on a WHIP POST that got no HTTP answer."""
    netloc = urlsplit(url).netloc
    if isinstance(exc, aiohttp.ClientResponseError):  # raise_for_status is off: not HTTP/1.x
        return (
            f"{netloc} does not speak HTTP/1.1 (is it Hark's gRPC port?); "
            f"WHIP is on Hark's HTTP port, e.g. {EXAMPLE_WHIP_URL}"
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        why = exc.os_error.strerror or str(exc.os_error)
        return f"cannot connect to {netloc} ({why}): is Hark running, and is this its HTTP port?"
    return f"WHIP POST to {url} failed: {exc}"


async def publish(
    path: str,
    url: str,
    token: str | None,
    ice_addresses: Sequence[str],
    out: TextIO = sys.stdout,
) -> int:
    """Publish an audio file over WHIP in real time, then DELETE the session.

    Ctrl-C and SIGTERM both end it early, with the DELETE.
    """
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaPlayer

    if problem := url_problem(url):
        print(f"hark publish: {problem}", file=sys.stderr)
        return 2
    if ice_addresses:
        restrict_host_candidates(ice_addresses)
    try:
        player = MediaPlayer(path)
    except Exception as exc:  # PyAV reports unreadable files with assorted exception types
        print(f"hark publish: {unreadable(path, exc)}", file=sys.stderr)
        return 2
    if player.audio is None:
        print(f"hark publish: {path} has no audio stream", file=sys.stderr)
        return 2
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    pc = RTCPeerConnection()
    pc.addTransceiver(player.audio, direction="sendonly")
    finished = asyncio.Event()
    player.audio.on("ended", finished.set)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, finished.set)
    resource = None
    async with aiohttp.ClientSession() as http:
        try:
            await pc.setLocalDescription(await pc.createOffer())
            async with http.post(url, data=pc.localDescription.sdp, headers=headers) as response:
                answer = await response.text()
                if response.status != 201:
                    problem = refusal(url, response.status, response.reason or "", answer)
                    print(f"hark publish: {problem}", file=sys.stderr)
                    return 1
                resource = urljoin(url, response.headers["Location"])
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            print(f"session {resource.rsplit('/', 1)[1]} publishing {path}", file=out, flush=True)
            started = time.monotonic()
            while not finished.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(finished.wait(), 1.0)
                elapsed = time.monotonic() - started
                print(f"  {elapsed:5.1f} s sent ({pc.connectionState})", file=out, flush=True)
            return 0
        except aiohttp.ClientError as exc:
            print(f"hark publish: {http_failure(url, exc)}", file=sys.stderr)
            return 1
        except HarkError as exc:
            print(f"hark publish: {exc}", file=sys.stderr)
            return 1
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            if resource is not None:
                async with http.delete(resource, headers=headers) as response:
                    print(f"session closed (DELETE {response.status})", file=out, flush=True)
            await pc.close()


PLAY_RATE = 48000
PLAY_CHUNK_SAMPLES = 4800


def _pcm_chunks(path: str) -> list[bytes]:
    """The file's audio as 48 kHz mono 16-bit PCM, in 100 ms chunks."""
    import av

    from media.audio.pcm import pcm_bytes

    chunks: list[bytes] = []
    resampler = av.AudioResampler(
        format="s16", layout="mono", rate=PLAY_RATE, frame_size=PLAY_CHUNK_SAMPLES
    )
    with av.open(path) as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        for frame in container.decode(audio=0):
            chunks.extend(pcm_bytes(f) for f in resampler.resample(frame))
    chunks.extend(pcm_bytes(f) for f in resampler.resample(None))
    return chunks


async def play(
    target: str,
    token: str | None,
    session_id: str,
    path: str,
    replace: bool,
    out: TextIO = sys.stdout,
) -> int:
    """Play an audio file to a session's WHEP players, as a backend's PlayAudio would."""
    try:
        chunks = await asyncio.to_thread(_pcm_chunks, path)
    except Exception as exc:  # PyAV reports unreadable files with assorted exception types
        print(f"hark play: {unreadable(path, exc)}", file=sys.stderr)
        return 2
    async with HarkClient(target, token=token) as hark:
        reply = await hark.play(session_id, chunks, PLAY_RATE, replace=replace)
    how = "finished"
    if reply.interrupted:
        how = f"interrupted ({pb.PlaybackInterruptReason.Name(reply.interrupt_reason)})"
    print(f"{reply.playback_id} {how} after {reply.played_ms} ms", file=out, flush=True)
    return 0
