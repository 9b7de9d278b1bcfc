"""The ``hark`` command. The only place that configures logging."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from media import __version__
from media.config import Config, ConfigError, IceServer

logger = logging.getLogger("media")

ENV_PREFIX = "HARK_"

Parse = Callable[[str], Any]

# Every scalar option of `hark serve`: flag name, parser, help. The default is Config's.
SERVE_OPTIONS: list[tuple[str, Parse, str]] = [
    ("http-host", str, "HTTP (WHIP) bind address"),
    ("http-port", int, "HTTP port; 0 picks a free one"),
    ("grpc-host", str, "gRPC bind address"),
    ("grpc-port", int, "gRPC port; 0 picks a free one"),
    ("public-url", str, "base URL for Location/whip_url (default: the bound address)"),
    ("token", str, "server bearer token for WHIP POST and gRPC, at least 8 characters"),
    ("ready-timeout", float, "seconds from offer to READY"),
    ("media-timeout", float, "seconds without RTP before MEDIA_TIMEOUT"),
    ("session-ttl", float, "seconds a pre-created session waits for a publisher"),
    ("closed-retention", float, "seconds closed sessions stay readable"),
    ("heartbeat-interval", float, "idle seconds between watch heartbeats"),
    ("max-sessions", int, "live sessions at most"),
    (
        "max-loop-lag-ms",
        int,
        "refuse new sessions while event-loop lag averages more (0: off)",
    ),
    ("vad-sample-rate", int, "VAD and StreamAudio rate: 8000, 16000, 32000 or 48000 Hz"),
    ("vad-frame-ms", int, "VAD frame: 10, 20 or 30 ms"),
    ("vad-aggressiveness", int, "webrtcvad aggressiveness 0..3"),
    ("vad-start-window-ms", int, "speech starts when start-ratio of this window is voiced"),
    ("vad-start-ratio", float, "voiced share of the start window that starts speech"),
    ("vad-end-silence-ms", int, "speech ends after this much mostly-unvoiced audio"),
    ("vad-end-ratio", float, "unvoiced share of end-silence that ends speech"),
    ("vad-pre-roll-ms", int, "audio before the start that belongs to a segment"),
    ("vad-min-speech-ms", int, "shorter bursts are discarded"),
    ("vad-max-segment-ms", int, "longer speech is split"),
    ("pre-listen-ms", int, "audio kept while not listening, analysed when listening starts"),
    ("audio-queue-ms", int, "StreamAudio queue per subscriber; the oldest audio is dropped"),
    (
        "jitter-frames",
        int,
        "packets held waiting for a missing one (20 ms each)",
    ),
    ("metrics-port", int, "serve /metrics on this port instead of the HTTP port"),
    (
        "udp-port",
        int,
        "one UDP port for the media of every peer connection (default: a port per connection)",
    ),
    ("workers", int, "worker processes sharing the public ports (0: one per CPU)"),
    ("redis-url", str, "join a cluster through this Redis: redis://HOST:PORT/DB"),
    ("node-id", str, "this node's id in the cluster and in session ids (default: hostname)"),
    (
        "grpc-public-address",
        str,
        "HOST:PORT other nodes and clients dial for this node's gRPC (default: the bound one)",
    ),
    ("node-ttl", float, "seconds a node's cluster membership outlives its last heartbeat"),
    (
        "cluster-secret",
        str,
        "secret shared by every node: signs session tokens and forwarded requests "
        "(default: derived from --token)",
    ),
    ("max-watchers", int, "open WatchSession/WatchSessions streams at most"),
    ("max-offer-bytes", int, "largest SDP offer or trickle fragment accepted (413 above it)"),
    ("max-m-lines", int, "most m-lines accepted in an offer (422 above it)"),
    ("max-players-per-session", int, "WHEP players per session at most (503 above it)"),
    ("player-timeout", float, "seconds a WHEP player may send no RTCP report before removal"),
    (
        "max-playback-queue-s",
        float,
        "agent audio queued per session before PlayAudio waits",
    ),
    ("rate-limit", float, "POST/PATCH/DELETE per second per client IP (0: off)"),
    ("rate-burst", int, "burst allowed above --rate-limit"),
    ("drain-timeout", float, "seconds SIGTERM waits for live sessions before SHUTDOWN"),
    (
        "http-header-timeout",
        float,
        "seconds a connection has to send a request's headers (also the idle keep-alive time)",
    ),
    ("http-body-timeout", float, "seconds a request has to send its whole body (408 after)"),
    (
        "max-connections-per-ip",
        int,
        "open HTTP connections per client address (an IPv6 client's /64) at most (0: off)",
    ),
    (
        "max-connections",
        int,
        "open HTTP connections in all at most (0: off); keep it under the open-file limit",
    ),
    ("http-tls-cert", str, "PEM certificate: serve HTTPS"),
    ("http-tls-key", str, "PEM private key for --http-tls-cert"),
    ("grpc-tls-cert", str, "PEM certificate: serve gRPC over TLS"),
    ("grpc-tls-key", str, "PEM private key for --grpc-tls-cert"),
    ("grpc-client-ca", str, "PEM CA bundle: require client certificates (mTLS) on gRPC"),
    (
        "grpc-cluster-ca",
        str,
        "PEM CA bundle: trust the other nodes' gRPC certificates (forwarding over TLS)",
    ),
    ("log-level", str, "DEBUG, INFO, WARNING or ERROR"),
    ("log-format", str, "text or json"),
]

# Repeatable options; their environment variable takes a space- or comma-separated list.
LIST_OPTIONS: list[tuple[str, str]] = [
    (
        "ice-server",
        "STUN/TURN URL: stun:HOST:PORT or turn:USER:CRED@HOST:PORT?transport=udp",
    ),
    ("cors-origin", "allowed browser origin; default * only when HTTP is bound to loopback"),
    ("ice-address", "local IP address to offer as ICE host candidate (default: every interface)"),
    (
        "ice-public-address",
        "IP address announced in host candidates instead of the bound one (one per family)",
    ),
]


def _attr(flag: str) -> str:
    return flag.replace("-", "_")


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag.upper().replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hark", description="Hark WebRTC media service")
    parser.add_argument("--version", action="version", version=f"hark {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server")
    serve.set_defaults(usage_error=serve.error)
    defaults = Config()
    for flag, parse, help_text in SERVE_OPTIONS:
        default = getattr(defaults, _attr(flag))
        raw = os.environ.get(_env_name(flag))
        try:
            value = parse(raw) if raw is not None else default
        except ValueError:
            serve.error(f"{_env_name(flag)}={raw!r} is not valid for --{flag}")
        shown = "none" if default is None else default
        serve.add_argument(
            f"--{flag}",
            type=parse,
            default=value,
            help=f"{help_text} [env {_env_name(flag)}; default {shown}]",
        )
    for flag, help_text in LIST_OPTIONS:
        raw = os.environ.get(_env_name(flag), "").strip()
        serve.add_argument(
            f"--{flag}",
            action="append",
            default=None,
            help=f"{help_text}; repeatable [env {_env_name(flag)}, space- or comma-separated]",
        )
        serve.set_defaults(**{f"{_attr(flag)}_env": re.split(r"[\s,]+", raw) if raw else []})
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        default=os.environ.get(_env_name("insecure-no-auth")) in ("1", "true", "yes"),
        help="allow binding a non-loopback address without --token [env HARK_INSECURE_NO_AUTH]",
    )
    serve.add_argument(
        "--whip-redirect",
        action="store_true",
        default=os.environ.get(_env_name("whip-redirect")) in ("1", "true", "yes"),
        help="answer a WHIP POST placed on another node with 307 to it instead of proxying "
        "[env HARK_WHIP_REDIRECT]",
    )
    _client_commands(commands)
    return parser


def _client_commands(commands: Any) -> None:
    def connection(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--target",
            default=os.environ.get("HARK_TARGET", "127.0.0.1:50051"),
            help="Hark's gRPC address [env HARK_TARGET; default 127.0.0.1:50051]",
        )
        command.add_argument(
            "--token", default=os.environ.get("HARK_TOKEN"), help="bearer token [env HARK_TOKEN]"
        )

    sessions = commands.add_parser("sessions", help="list sessions as a table")
    connection(sessions)
    sessions.add_argument("--all", action="store_true", help="include retained closed sessions")
    sessions.add_argument("--json", action="store_true", help="one JSON object per line")

    watch = commands.add_parser("watch", help="print live events, one per line")
    connection(watch)
    watch.add_argument("session", nargs="?", help="one session (default: every session)")
    watch.add_argument("--since", type=int, default=0, help="resume after this revision")
    watch.add_argument("--json", action="store_true", help="protobuf JSON, one event per line")
    watch.add_argument(
        "--retries",
        type=int,
        default=20,
        help="failed reconnects in a row before giving up; 0: never give up [default 20]",
    )

    listen = commands.add_parser("listen", help="start or stop listening to a session")
    connection(listen)
    listen.add_argument("session", help="the session id")
    listen.add_argument("--stop", action="store_true", help="stop listening instead")
    listen.add_argument(
        "--wait",
        type=float,
        default=10.0,
        help="seconds to wait for the session to be READY; 0: fail at once [default 10]",
    )

    audio = commands.add_parser("audio", help="read a session's StreamAudio until it closes")
    connection(audio)
    audio.add_argument("session", help="the session id")
    audio.add_argument("--all", action="store_true", help="all audio while listening (mode ALL)")
    audio.add_argument(
        "--sample-rate",
        type=int,
        default=0,
        help="8000, 16000, 24000, 32000 or 48000 [default: the VAD's]",
    )
    audio.add_argument(
        "--chunk-ms", type=int, default=0, help="audio per message, 20 to 200 [default 100]"
    )
    audio.add_argument("--out", help="write the PCM to this WAV file")

    publish = commands.add_parser("publish", help="publish an audio file over WHIP")
    publish.add_argument("file", help="any audio file PyAV reads")
    publish.add_argument("--url", required=True, help="WHIP endpoint, e.g. http://HOST:8080/whip")
    publish.add_argument("--token", default=os.environ.get("HARK_TOKEN"), help="bearer token")
    publish.add_argument(
        "--ice-address", action="append", default=[], help="local IP to offer (repeatable)"
    )

    play = commands.add_parser("play", help="play an audio file to a session's WHEP players")
    connection(play)
    play.add_argument("session", help="the session id")
    play.add_argument("file", help="any audio file PyAV reads")
    play.add_argument("--replace", action="store_true", help="cut what is playing first")


def _listed(args: argparse.Namespace, flag: str) -> list[str]:
    return list(getattr(args, _attr(flag)) or getattr(args, f"{_attr(flag)}_env"))


def config_from_args(args: argparse.Namespace) -> Config:
    values = {_attr(flag): getattr(args, _attr(flag)) for flag, _, _ in SERVE_OPTIONS}
    values["log_level"] = values["log_level"].upper()
    return Config(
        **values,
        ice_servers=tuple(IceServer.parse(text) for text in _listed(args, "ice-server")),
        cors_origins=tuple(_listed(args, "cors-origin")),
        ice_addresses=tuple(_listed(args, "ice-address")),
        ice_public_addresses=tuple(_listed(args, "ice-public-address")),
        insecure_no_auth=args.insecure_no_auth,
        whip_redirect=args.whip_redirect,
    )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        session_id = getattr(record, "session_id", None)
        if session_id:
            entry["session_id"] = session_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiortc and aioice log per packet at DEBUG and per decode failure at WARNING.
    for noisy in ("aiortc", "aioice"):
        logging.getLogger(noisy).setLevel(max(logging.getLevelName(level), logging.WARNING))


def _run_client_command(args: argparse.Namespace) -> int:
    from media.cli import commands
    from media.errors import HarkError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("aiortc", "aioice"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if args.command == "sessions":
        run = commands.sessions(args.target, args.token, args.all, args.json)
    elif args.command == "watch":
        retries = args.retries if args.retries > 0 else None
        run = commands.watch(args.target, args.token, args.session, args.since, args.json, retries)
    elif args.command == "listen":
        run = commands.listen(args.target, args.token, args.session, args.stop, args.wait)
    elif args.command == "audio":
        run = commands.audio(
            args.target,
            args.token,
            args.session,
            everything=args.all,
            sample_rate=args.sample_rate,
            chunk_ms=args.chunk_ms,
            out_path=args.out,
        )
    elif args.command == "play":
        run = commands.play(args.target, args.token, args.session, args.file, args.replace)
    else:
        run = commands.publish(args.file, args.url, args.token, args.ice_address)
    try:
        return asyncio.run(run)
    except HarkError as exc:
        print(f"hark {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None, serve: Callable[[Config], Coroutine[Any, Any, int]]) -> int:
    """The ``hark`` command; ``serve`` runs a server (the composition root's, ``media.app``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("sessions", "watch", "listen", "audio", "publish", "play"):
        return _run_client_command(args)
    if args.command == "serve":
        try:
            config = config_from_args(args)
        except ConfigError as exc:
            args.usage_error(str(exc))
        configure_logging(config.log_level, config.log_format)
        return asyncio.run(serve(config))
    parser.error(f"unknown command {args.command}")
    return 2
