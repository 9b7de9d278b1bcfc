"""HTTPS on the HTTP port, TLS and mutual TLS on gRPC, with certificates made for the test."""

from __future__ import annotations

import datetime
import pathlib
import ssl

import aiohttp
import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from media.config import ConfigError
from media.v1 import media_pb2 as pb
from media.v1 import media_pb2_grpc
from tests.in_process_cluster import in_process_cluster
from tests.support import running_server, server_config


def issue(
    name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), False
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256()), key


def write(folder: pathlib.Path, name: str, cert: x509.Certificate, key: object) -> None:
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> pathlib.Path:
    ca = issue("hark test CA")
    write(tmp_path, "ca", *ca)
    write(tmp_path, "server", *issue("localhost", ca))
    write(tmp_path, "client", *issue("backend", ca))
    return tmp_path


async def test_https_and_grpc_mutual_tls(pki: pathlib.Path) -> None:
    async with running_server(
        http_host="localhost",
        grpc_host="localhost",
        http_tls_cert=str(pki / "server.pem"),
        http_tls_key=str(pki / "server.key"),
        grpc_tls_cert=str(pki / "server.pem"),
        grpc_tls_key=str(pki / "server.key"),
        grpc_client_ca=str(pki / "ca.pem"),
    ) as app:
        assert app.base_url.startswith("https://localhost:")
        trust = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        async with aiohttp.ClientSession() as http:
            async with http.get(app.base_url + "/healthz", ssl=trust) as response:
                assert response.status == 200
            with pytest.raises(aiohttp.ClientConnectorError):
                await http.get(app.base_url + "/healthz")  # the system store does not trust it

        target = f"localhost:{app.grpc_port}"
        ca = (pki / "ca.pem").read_bytes()
        client = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(pki / "client.key").read_bytes(),
            certificate_chain=(pki / "client.pem").read_bytes(),
        )
        async with grpc.aio.secure_channel(target, client) as channel:
            stub = media_pb2_grpc.MediaServiceStub(channel)
            created = await stub.CreateSession(pb.CreateSessionRequest())
            assert created.whip_url.startswith("https://localhost:")

        anonymous = grpc.ssl_channel_credentials(root_certificates=ca)
        async with grpc.aio.secure_channel(target, anonymous) as channel:
            stub = media_pb2_grpc.MediaServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListSessions(pb.ListSessionsRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_member_forwards_to_another_over_mutual_tls_with_the_cluster_ca(
    pki: pathlib.Path,
) -> None:
    tls = {
        "grpc_host": "localhost",
        "grpc_tls_cert": str(pki / "server.pem"),
        "grpc_tls_key": str(pki / "server.key"),
        "grpc_client_ca": str(pki / "ca.pem"),
        "grpc_cluster_ca": str(pki / "ca.pem"),
    }
    client = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / "client.key").read_bytes(),
        certificate_chain=(pki / "client.pem").read_bytes(),
    )
    async with (
        in_process_cluster("alpha", "beta", **tls) as members,
        grpc.aio.secure_channel(members["alpha"].grpc_target, client) as at_alpha,
        grpc.aio.secure_channel(members["beta"].grpc_target, client) as at_beta,
    ):
        created = await media_pb2_grpc.MediaServiceStub(at_beta).CreateSession(
            pb.CreateSessionRequest()
        )
        stub = media_pb2_grpc.MediaServiceStub(at_alpha)
        session = await stub.GetSession(pb.GetSessionRequest(session_id=created.id), timeout=10)
        assert (session.id, session.node) == (created.id, "beta")


def test_a_cluster_with_grpc_tls_needs_the_cluster_ca(pki: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="--redis-url with --grpc-tls-cert needs --grpc-cluster"):
        server_config(
            redis_url="redis://127.0.0.1:1/0",
            cluster_secret="a-secret-of-16-chars-or-more",
            grpc_tls_cert=str(pki / "server.pem"),
            grpc_tls_key=str(pki / "server.key"),
        )
