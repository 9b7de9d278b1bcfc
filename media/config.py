"""Server configuration: a frozen, validated dataclass built from flags and ``HARK_*`` variables."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from media.core.segmenter import SegmenterConfig
from media.core.speech_settings import SpeechSettings
from media.errors import InvalidRequest

ICE_SCHEMES = ("stun", "stuns", "turn", "turns")


class ConfigError(ValueError):
    """A configuration value is out of range or malformed; the message names the option."""


@dataclass(frozen=True, slots=True)
class IceServer:
    """A STUN/TURN server given to aiortc and announced in WHIP ``Link`` headers."""

    url: str
    username: str | None = None
    credential: str | None = None

    @classmethod
    def parse(cls, text: str) -> IceServer:
        """Parse ``stun:host:port`` or ``turn:user:secret@host:port?transport=udp``."""
        scheme, sep, rest = text.strip().partition(":")
        if not sep or scheme.lower() not in ICE_SCHEMES or not rest:
            raise ConfigError(
                f"--ice-server {text!r}: expected stun:HOST[:PORT] or "
                "turn:[USER:CREDENTIAL@]HOST[:PORT][?transport=udp|tcp]"
            )
        username = credential = None
        if "@" in rest:
            userinfo, rest = rest.rsplit("@", 1)
            user, colon, secret = userinfo.partition(":")
            if not colon or not user:
                raise ConfigError(f"--ice-server: credentials must be USER:CREDENTIAL@ in {scheme}")
            username, credential = unquote(user), unquote(secret)
        return cls(f"{scheme.lower()}:{rest}", username, credential)

    def link_header(self) -> str:
        """RFC 9725 section 4.6 ``Link`` value."""
        value = f'<{self.url}>; rel="ice-server"'
        if self.username is not None:
            value += f'; username="{_quoted(self.username)}"'
            value += f'; credential="{_quoted(self.credential or "")}"'
            value += '; credential-type="password"'
        return value

    def __repr__(self) -> str:
        hidden = "" if self.credential is None else ", credential=<hidden>"
        return f"IceServer({self.url!r}, username={self.username!r}{hidden})"


def _quoted(text: str) -> str:
    return quote(text, safe="!#$%&'()*+,-./:;<=>?@[]^_`{|}~ ")


@dataclass(frozen=True, slots=True)
class Config:
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    public_url: str | None = None
    token: str | None = field(default=None, repr=False)
    ice_servers: tuple[IceServer, ...] = ()
    ready_timeout: float = 10.0
    media_timeout: float = 5.0
    session_ttl: float = 60.0
    closed_retention: float = 60.0
    heartbeat_interval: float = 5.0
    max_sessions: int = 500
    max_loop_lag_ms: int = 25
    event_retention: int = 256
    vad_sample_rate: int = 16000
    vad_frame_ms: int = 20
    vad_aggressiveness: int = 2
    vad_start_window_ms: int = 100
    vad_start_ratio: float = 0.75
    vad_end_silence_ms: int = 500
    vad_end_ratio: float = 0.9
    vad_pre_roll_ms: int = 300
    vad_min_speech_ms: int = 100
    vad_max_segment_ms: int = 30000
    pre_listen_ms: int = 500
    audio_queue_ms: int = 2000
    jitter_frames: int = 1
    metrics_port: int | None = None
    max_watchers: int = 1000
    max_offer_bytes: int = 65536
    max_m_lines: int = 4
    max_players_per_session: int = 8
    player_timeout: float = 15.0
    max_playback_queue_s: float = 60.0
    rate_limit: float = 20.0
    rate_burst: int = 40
    drain_timeout: float = 10.0
    http_header_timeout: float = 10.0
    http_body_timeout: float = 10.0
    max_connections_per_ip: int = 64
    max_connections: int = 10_000
    http_tls_cert: str | None = None
    http_tls_key: str | None = None
    grpc_tls_cert: str | None = None
    grpc_tls_key: str | None = None
    grpc_client_ca: str | None = None
    grpc_cluster_ca: str | None = None
    insecure_no_auth: bool = False
    cors_origins: tuple[str, ...] = ()
    ice_addresses: tuple[str, ...] = ()
    ice_public_addresses: tuple[str, ...] = ()
    udp_port: int | None = None
    workers: int = 1
    redis_url: str | None = field(default=None, repr=False)
    node_id: str | None = None
    grpc_public_address: str | None = None
    node_ttl: float = 5.0
    whip_redirect: bool = False
    cluster_secret: str | None = field(default=None, repr=False)
    log_level: str = "INFO"
    log_format: str = "text"

    def __post_init__(self) -> None:
        for name in ("http_port", "grpc_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"--{_flag(name)} must be 0..65535, got {port}")
        for name in (
            "ready_timeout",
            "media_timeout",
            "player_timeout",
            "session_ttl",
            "heartbeat_interval",
        ):
            value = getattr(self, name)
            if not 0 < value <= 86400:
                raise ConfigError(f"--{_flag(name)} must be > 0 and <= 86400 s, got {value}")
        if not 0 <= self.closed_retention <= 86400:
            raise ConfigError(f"--closed-retention must be 0..86400 s, got {self.closed_retention}")
        self._check_security()
        for address in self.ice_addresses:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ConfigError(f"--ice-address {address!r} is not an IP address") from None
        for address in self.ice_public_addresses:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ConfigError(
                    f"--ice-public-address {address!r} is not an IP address"
                ) from None
        if self.udp_port is not None and not 1 <= self.udp_port <= 65535:
            raise ConfigError(f"--udp-port must be 1..65535, got {self.udp_port}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port must be 0..65535, got {self.metrics_port}")
        if not 1024 <= self.max_offer_bytes <= 1024 * 1024:
            raise ConfigError(
                f"--max-offer-bytes must be 1024..1048576, got {self.max_offer_bytes}"
            )
        if not 1 <= self.max_m_lines <= 64:
            raise ConfigError(f"--max-m-lines must be 1..64, got {self.max_m_lines}")
        if not 1 <= self.max_players_per_session <= 256:
            raise ConfigError(
                f"--max-players-per-session must be 1..256, got {self.max_players_per_session}"
            )
        if not 1 <= self.max_playback_queue_s <= 3600:
            raise ConfigError(
                f"--max-playback-queue-s must be 1..3600 s, got {self.max_playback_queue_s}"
            )
        if self.max_watchers < 1:
            raise ConfigError(f"--max-watchers must be >= 1, got {self.max_watchers}")
        if self.rate_limit < 0:
            raise ConfigError(f"--rate-limit must be >= 0 (0 turns it off), got {self.rate_limit}")
        if self.rate_burst < 1:
            raise ConfigError(f"--rate-burst must be >= 1, got {self.rate_burst}")
        for name in ("http_header_timeout", "http_body_timeout"):
            value = getattr(self, name)
            if not 0 < value <= 3600:
                raise ConfigError(f"--{_flag(name)} must be > 0 and <= 3600 s, got {value}")
        if self.max_connections_per_ip < 0:
            raise ConfigError(
                f"--max-connections-per-ip must be >= 0 (0 turns it off), "
                f"got {self.max_connections_per_ip}"
            )
        if self.max_connections < 0:
            raise ConfigError(
                f"--max-connections must be >= 0 (0 turns it off), got {self.max_connections}"
            )
        if not 0 <= self.drain_timeout <= 3600:
            raise ConfigError(f"--drain-timeout must be 0..3600 s, got {self.drain_timeout}")
        if not 0 <= self.jitter_frames <= 8:
            raise ConfigError(f"--jitter-frames must be 0..8, got {self.jitter_frames}")
        if self.max_sessions < 1:
            raise ConfigError(f"--max-sessions must be >= 1, got {self.max_sessions}")
        if self.max_loop_lag_ms != 0 and not 10 <= self.max_loop_lag_ms <= 10000:
            raise ConfigError(
                f"--max-loop-lag-ms must be 10..10000 (0 turns it off), got {self.max_loop_lag_ms}"
            )
        if self.event_retention < 16:
            raise ConfigError(f"--event-retention must be >= 16, got {self.event_retention}")
        if self.token is not None and len(self.token) < 8:
            raise ConfigError("--token must be at least 8 characters")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(
                f"--log-level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level}"
            )
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"--log-format must be text or json, got {self.log_format}")
        self.speech_settings()
        self._check_cluster()
        if self.public_url is not None and not self.public_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"--public-url must start with http:// or https://, got {self.public_url}"
            )

    def _check_security(self) -> None:
        for cert, key, name in (
            (self.http_tls_cert, self.http_tls_key, "http"),
            (self.grpc_tls_cert, self.grpc_tls_key, "grpc"),
        ):
            if (cert is None) != (key is None):
                raise ConfigError(f"--{name}-tls-cert and --{name}-tls-key go together")
        if self.grpc_client_ca is not None and self.grpc_tls_cert is None:
            raise ConfigError("--grpc-client-ca needs --grpc-tls-cert and --grpc-tls-key")
        exposed = [h for h in (self.http_host, self.grpc_host) if not is_loopback(h)]
        if exposed and self.token is None and not self.insecure_no_auth:
            raise ConfigError(
                f"binding {exposed[0]} exposes Hark beyond this machine: set --token, "
                "or --insecure-no-auth to run without authentication"
            )

    def _check_cluster(self) -> None:
        if not 0 <= self.workers <= 256:
            raise ConfigError(f"--workers must be 0..256 (0: one per CPU), got {self.workers}")
        if self.node_id is not None and not is_node_id(self.node_id):
            raise ConfigError(
                f"--node-id {self.node_id!r}: use 1..63 lowercase letters, digits and '-', "
                "starting and ending with a letter or digit (a DNS label)"
            )
        if not 1 <= self.node_ttl <= 300:
            raise ConfigError(f"--node-ttl must be 1..300 s, got {self.node_ttl}")
        if self.redis_url is not None and not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ConfigError("--redis-url must start with redis://, rediss:// or unix://")
        if self.grpc_public_address is not None and not _is_host_port(self.grpc_public_address):
            raise ConfigError(
                f"--grpc-public-address must be HOST:PORT, got {self.grpc_public_address!r}"
            )
        if self.cluster_secret is not None and len(self.cluster_secret) < 16:
            raise ConfigError("--cluster-secret must be at least 16 characters")
        if self.redis_url is not None and self.cluster_secret is None and self.token is None:
            raise ConfigError(
                "--redis-url needs --cluster-secret (or --token) shared by every node: it signs "
                "per-session tokens and forwarded requests"
            )
        if self.grpc_cluster_ca is not None and self.grpc_tls_cert is None:
            raise ConfigError("--grpc-cluster-ca needs --grpc-tls-cert and --grpc-tls-key")
        if self.redis_url is not None and self.grpc_tls_cert and self.grpc_cluster_ca is None:
            raise ConfigError(
                "--redis-url with --grpc-tls-cert needs --grpc-cluster-ca: the PEM CA bundle "
                "that signed the other nodes' gRPC certificates (nodes forward calls to each "
                "other over gRPC TLS)"
            )
        if self.whip_redirect and self.redis_url is None:
            raise ConfigError("--whip-redirect needs --redis-url (it redirects to other nodes)")

    @property
    def effective_node_id(self) -> str:
        """``--node-id``, or this host's name made into a DNS label."""
        return self.node_id or node_id_from_hostname(socket.gethostname())

    @property
    def effective_workers(self) -> int:
        """``--workers``, with 0 meaning one per CPU this process may run on."""
        if self.workers:
            return self.workers
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )

    @property
    def effective_cors_origins(self) -> tuple[str, ...]:
        """``--cors-origin``, or ``*`` when HTTP is bound to loopback only."""
        if self.cors_origins:
            return self.cors_origins
        return ("*",) if is_loopback(self.http_host) else ()

    def speech_settings(self) -> SpeechSettings:
        """The audio pipeline's server-wide defaults (``ConfigError`` names a bad option)."""
        try:
            segmenter = SegmenterConfig(
                frame_ms=self.vad_frame_ms,
                start_window_ms=self.vad_start_window_ms,
                start_ratio=self.vad_start_ratio,
                end_silence_ms=self.vad_end_silence_ms,
                end_ratio=self.vad_end_ratio,
                pre_roll_ms=self.vad_pre_roll_ms,
                min_speech_ms=self.vad_min_speech_ms,
                max_segment_ms=self.vad_max_segment_ms,
            )
            return SpeechSettings(
                sample_rate=self.vad_sample_rate,
                aggressiveness=self.vad_aggressiveness,
                segmenter=segmenter,
                pre_listen_ms=self.pre_listen_ms,
                subscriber_queue_ms=self.audio_queue_ms,
            )
        except InvalidRequest as exc:
            name = str(exc).split(" ", 1)[0]
            flag = {"subscriber_queue_ms": "audio-queue-ms", "pre_listen_ms": "pre-listen-ms"}.get(
                name, "vad-" + name.replace("_", "-")
            )
            raise ConfigError(f"--{flag}: {exc}") from exc

    def base_url(self, bound_http_port: int, secure: bool = False) -> str:
        """Where clients reach the HTTP surface: ``--public-url`` or the bound address."""
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if secure else "http"
        return f"{scheme}://{_url_host(self.http_host)}:{bound_http_port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_NODE_ID = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def is_node_id(text: str) -> bool:
    """A node id is a DNS label: it appears in session ids, URLs and Redis keys unescaped."""
    return _NODE_ID.fullmatch(text) is not None


def node_id_from_hostname(hostname: str) -> str:
    """The first label of ``hostname``, lowercased, other characters as '-' (``node`` if empty)."""
    label = re.sub(r"[^a-z0-9-]", "-", hostname.split(".", 1)[0].lower())[:63].strip("-")
    return label or "node"


def _is_host_port(text: str) -> bool:
    host, colon, port = text.rpartition(":")
    return bool(colon and host and port.isdigit() and 1 <= int(port) <= 65535)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host
