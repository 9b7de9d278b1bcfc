"""An HTTP/1.1 client on a raw TCP connection that writes a request the way a real network
delivers it: the request line and headers, then the body in pieces with pauses between them
(a 1,448-byte first segment, as on an Ethernet MTU, then the rest).

Every write is flushed with TCP_NODELAY, so the server sees each piece as its own segment.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Mapping, Sequence

SEGMENT = 1448
PAUSE_S = 0.05


@dataclasses.dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # names lower-cased; a repeated header keeps its last value
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def pieces(body: bytes, first: int = SEGMENT) -> list[bytes]:
    """``body`` as a ``first``-byte segment and the rest; a body no longer than that in thirds."""
    if len(body) > first:
        return [body[:first], body[first:]]
    third = max(1, len(body) // 3)
    parts = [body[:third], body[third : 2 * third], body[2 * third :]]
    return [part for part in parts if part]


def chunked(parts: Sequence[bytes]) -> list[bytes]:
    """``parts`` in HTTP/1.1 chunked framing, one chunk each, the last piece ending the body."""
    framed = [f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in parts]
    return [*framed[:-1], framed[-1] + b"0\r\n\r\n"]


def request_head(
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    close: bool = True,
    chunked: bool = False,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif body:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


async def connect(
    port: int, host: str = "127.0.0.1", *, source: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection with Nagle off; ``source`` picks the local address (127.0.0.2, say)."""
    local = (source, 0) if source else None
    reader, writer = await asyncio.open_connection(host, port, local_addr=local)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def write_in_pieces(
    writer: asyncio.StreamWriter, parts: Sequence[bytes], pause: float = PAUSE_S
) -> None:
    for index, part in enumerate(parts):
        if index:
            await asyncio.sleep(pause)  # the gap between segments is what is being tested
        writer.write(part)
        await writer.drain()


async def send_in_pieces(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    *,
    parts: Sequence[bytes] | None = None,
    pause: float = PAUSE_S,
    chunks: bool = False,
) -> RawResponse:
    """Send one request (headers, then ``parts`` of the body, by default ``pieces(body)``,
    each its own chunk with ``chunks``) and read the whole response."""
    reader, writer = await connect(port)
    try:
        head = request_head(method, path, headers or {}, body, chunked=chunks)
        body_parts = list(pieces(body) if parts is None else parts)
        if chunks:
            body_parts = chunked(body_parts)
        await write_in_pieces(writer, [head, *body_parts], pause)
        return await read_response(reader)
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    body = await reader.readexactly(int(length)) if length is not None else await reader.read()
    return RawResponse(int(status_line.split(" ")[1]), headers, body)


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (EOF or reset)."""
    received = b""
    try:
        while chunk := await reader.read(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received
