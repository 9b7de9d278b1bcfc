"""The ``hark`` command. The only place that configures logging."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from media import __version__
from media.config import Config, ConfigError, IceServer

logger = logging.getLogger("media")

ENV_PREFIX = "HARK_"

AUDIO_OPTIONS: list[tuple[str, Callable[[str], Any], str]] = [
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
    ("pre-listen-ms", int, "audio kept while not listening, replayed when listening starts"),
    ("audio-queue-ms", int, "StreamAudio queue per subscriber; the oldest audio is dropped"),
    (
        "jitter-frames",
        int,
        "audio frames aiortc's jitter buffer holds before decoding (20 ms each)",
    ),
]

OPERATIONS_OPTIONS: list[tuple[str, Callable[[str], Any], str]] = [
    ("metrics-port", int, "serve /metrics on this port instead of the HTTP port"),
    ("max-watchers", int, "open WatchSession/WatchSessions streams at most"),
    ("rate-limit", float, "POST/PATCH/DELETE per second per client IP (0: off)"),
    ("rate-burst", int, "burst allowed above --rate-limit"),
    ("drain-timeout", float, "seconds SIGTERM waits for live sessions before SHUTDOWN"),
    ("http-tls-cert", str, "PEM certificate: serve HTTPS"),
    ("http-tls-key", str, "PEM private key for --http-tls-cert"),
    ("grpc-tls-cert", str, "PEM certificate: serve gRPC over TLS"),
    ("grpc-tls-key", str, "PEM private key for --grpc-tls-cert"),
    ("grpc-client-ca", str, "PEM CA bundle: require client certificates (mTLS) on gRPC"),
]


def _env(name: str) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"))


def _option(
    parser: argparse.ArgumentParser,
    name: str,
    kind: Callable[[str], Any],
    default: Any,
    help_text: str,
) -> None:
    raw = _env(name)
    try:
        value = kind(raw) if raw is not None else default
    except ValueError:
        parser.error(
            f"{ENV_PREFIX}{name.upper().replace('-', '_')}={raw!r} is not valid for --{name}"
        )
    env_name = ENV_PREFIX + name.upper().replace("-", "_")
    parser.add_argument(
        f"--{name}",
        type=kind,
        default=value,
        help=f"{help_text} [env {env_name}; default {default}]",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hark", description="Hark WebRTC media service")
    parser.add_argument("--version", action="version", version=f"hark {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server")
    defaults = Config()
    _option(serve, "http-host", str, defaults.http_host, "HTTP (WHIP) bind address")
    _option(serve, "http-port", int, defaults.http_port, "HTTP port; 0 picks a free one")
    _option(serve, "grpc-host", str, defaults.grpc_host, "gRPC bind address")
    _option(serve, "grpc-port", int, defaults.grpc_port, "gRPC port; 0 picks a free one")
    _option(
        serve, "public-url", str, None, "base URL for Location/whip_url (default: bound address)"
    )
    _option(serve, "token", str, None, "server bearer token for WHIP POST and gRPC")
    ice_env = _env("ice-server")
    serve.add_argument(
        "--ice-server",
        action="append",
        default=None,
        help="STUN/TURN URL, repeatable: stun:HOST:PORT or turn:USER:CRED@HOST:PORT?transport=udp "
        "[env HARK_ICE_SERVER, space- or comma-separated]",
    )
    serve.set_defaults(ice_server_env=re.split(r"[\s,]+", ice_env.strip()) if ice_env else [])
    _option(serve, "ready-timeout", float, defaults.ready_timeout, "seconds from offer to READY")
    _option(
        serve, "media-timeout", float, defaults.media_timeout, "seconds without RTP before close"
    )
    _option(
        serve, "session-ttl", float, defaults.session_ttl, "seconds a pre-created session waits"
    )
    _option(
        serve, "closed-retention", float, defaults.closed_retention, "seconds closed sessions stay"
    )
    _option(
        serve,
        "heartbeat-interval",
        float,
        defaults.heartbeat_interval,
        "idle seconds per heartbeat",
    )
    _option(serve, "max-sessions", int, defaults.max_sessions, "live sessions at most")
    for name, kind, help_text in AUDIO_OPTIONS + OPERATIONS_OPTIONS:
        _option(serve, name, kind, getattr(defaults, name.replace("-", "_")), help_text)
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        default=_env("insecure-no-auth") in ("1", "true", "yes"),
        help="allow binding a non-loopback address without --token [env HARK_INSECURE_NO_AUTH]",
    )
    cors_env = _env("cors-origin")
    serve.add_argument(
        "--cors-origin",
        action="append",
        default=None,
        help="allowed browser origin, repeatable; default * only when HTTP is bound to loopback "
        "[env HARK_CORS_ORIGIN, space- or comma-separated]",
    )
    serve.set_defaults(cors_origin_env=re.split(r"[\s,]+", cors_env.strip()) if cors_env else [])
    _option(serve, "log-level", str, defaults.log_level, "DEBUG, INFO, WARNING or ERROR")
    _option(serve, "log-format", str, defaults.log_format, "text or json")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    ice = [IceServer.parse(text) for text in (args.ice_server or args.ice_server_env)]
    return Config(
        http_host=args.http_host,
        http_port=args.http_port,
        grpc_host=args.grpc_host,
        grpc_port=args.grpc_port,
        public_url=args.public_url,
        token=args.token,
        ice_servers=tuple(ice),
        ready_timeout=args.ready_timeout,
        media_timeout=args.media_timeout,
        session_ttl=args.session_ttl,
        closed_retention=args.closed_retention,
        heartbeat_interval=args.heartbeat_interval,
        max_sessions=args.max_sessions,
        insecure_no_auth=args.insecure_no_auth,
        cors_origins=tuple(args.cors_origin or args.cors_origin_env),
        **{
            name.replace("-", "_"): getattr(args, name.replace("-", "_"))
            for name, _, _ in AUDIO_OPTIONS + OPERATIONS_OPTIONS
        },
        log_level=args.log_level.upper(),
        log_format=args.log_format,
    )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
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


async def serve(config: Config) -> int:
    from media.app import HarkApp

    app = HarkApp(config)
    signals = asyncio.Queue[int]()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    try:
        await app.start()
    except OSError as exc:
        logger.error("cannot start: %s", exc)
        return 2
    first = await signals.get()
    logger.info("%s: draining; a second signal skips the wait", signal.Signals(first).name)
    drain = asyncio.create_task(app.drain())
    second = asyncio.create_task(signals.get())
    await asyncio.wait({drain, second}, return_when=asyncio.FIRST_COMPLETED)
    for task in (drain, second):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    logger.info("closing every remaining session with SHUTDOWN")
    await app.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        try:
            config = config_from_args(args)
        except ConfigError as exc:
            parser.error(str(exc))
        configure_logging(config.log_level, config.log_format)
        return asyncio.run(serve(config))
    parser.error(f"unknown command {args.command}")
    return 2
