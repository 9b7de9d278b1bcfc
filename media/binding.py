"""Binding the server's ports: one sentence naming the address and why, when it fails."""

from __future__ import annotations

import errno
import os
import pathlib
import socket
import ssl

import grpc

from media.config import Config


class CannotListen(OSError):
    """A port could not be bound; the message names the service, the address and why."""

    def __init__(self, what: str, address: str, reason: str) -> None:
        super().__init__(f"cannot listen for {what} on {address}: {reason}")


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def why_bind_failed(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "the address is already in use (another Hark, or another program)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "that address is not one of this machine's"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    return os.strerror(exc.errno) if exc.errno else str(exc)


def check_can_bind(what: str, host: str, port: int, *, reuse_port: bool = False) -> None:
    """Binds and releases the address first: grpc reports a busy port as a C-level log line and a
    bare RuntimeError, and this says why in one sentence instead."""
    if port == 0:
        return
    failure: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:  # the workers of one host share the port
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind(address)
                return
            except OSError as exc:
                failure = failure or exc
    if failure is not None:
        raise CannotListen(what, host_port(host, port), why_bind_failed(failure)) from failure


def http_tls_context(config: Config) -> ssl.SSLContext | None:
    """HTTPS with ``--http-tls-cert`` and ``--http-tls-key``; ``None`` for plain HTTP."""
    if config.http_tls_cert is None or config.http_tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.http_tls_cert, config.http_tls_key)
    return context


def grpc_cluster_credentials(config: Config) -> grpc.ChannelCredentials | None:
    """How this node dials the other nodes' gRPC ports: over TLS trusting ``--grpc-cluster-ca``,
    presenting its own certificate (so nodes requiring ``--grpc-client-ca`` accept it)."""
    if config.grpc_cluster_ca is None or config.grpc_tls_cert is None or not config.grpc_tls_key:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=pathlib.Path(config.grpc_cluster_ca).read_bytes(),
        private_key=pathlib.Path(config.grpc_tls_key).read_bytes(),
        certificate_chain=pathlib.Path(config.grpc_tls_cert).read_bytes(),
    )


def grpc_server_credentials(config: Config) -> grpc.ServerCredentials | None:
    """gRPC over TLS (mTLS with ``--grpc-client-ca``); ``None`` for plain gRPC."""
    if config.grpc_tls_cert is None or config.grpc_tls_key is None:
        return None
    key = pathlib.Path(config.grpc_tls_key).read_bytes()
    cert = pathlib.Path(config.grpc_tls_cert).read_bytes()
    client_ca = pathlib.Path(config.grpc_client_ca).read_bytes() if config.grpc_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
