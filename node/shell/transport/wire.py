"""The two stream protocols, written once against ``ByteStream`` for both transports.

Request/response (``REQUEST_PROTOCOL``)::

    client -> server   u32 max_response | u32 length | payload     then half-close
    server -> client   u8 status | u32 length | body               then close

Blob fetch (``BLOB_PROTOCOL``)::

    client -> server   sha256 (32 bytes) | u64 size                then half-close
    server -> client   u8 status | u64 size | raw bytes            then close
                       (a refusal: u8 status | u64 n | n bytes of reason)

Ping (``PING_PROTOCOL``, libp2p's own: py-libp2p's host answers it, the twin here)::

    client -> server   32 random bytes
    server -> client   the same 32 bytes                           (repeat, or half-close)

Every length is checked against a limit *before* the bytes are read, so a peer can never
make us buffer more than we agreed to. The client tells the server its ``max_response`` so
an honest server refuses politely instead of tripping the client's limit. Big-endian ints.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Protocol

import trio

from node.errors import (
    BlobMismatch,
    BlobNotFound,
    OversizedFrame,
    PeerTimeout,
    RateLimited,
    RemoteProtocolError,
    RemoteRefused,
    TruncatedFrame,
)
from node.shell.transport.types import BlobSink

REQUEST_PROTOCOL = "/medforge/request/1.0.0"
BLOB_PROTOCOL = "/medforge/blob/1.0.0"
PING_PROTOCOL = "/ipfs/ping/1.0.0"  # libp2p.host.ping.ID
PING_LENGTH = 32  # libp2p.host.ping.PING_LENGTH

OK, REFUSED, NOT_FOUND, RATE_LIMITED, TOO_LARGE = range(5)
_REFUSALS: dict[int, type[RemoteRefused]] = {
    REFUSED: RemoteRefused,
    NOT_FOUND: BlobNotFound,
    RATE_LIMITED: RateLimited,
    TOO_LARGE: RemoteRefused,
}
_REQ_HEAD = struct.Struct(">II")
_RESP_HEAD = struct.Struct(">BI")
_BLOB_REQ = struct.Struct(">32sQ")
_BLOB_HEAD = struct.Struct(">BQ")
MAX_REFUSAL = 1024  # a refusal body is a short human-readable reason


class ByteStream(Protocol):
    """The part of a stream the protocols need. ``read`` returns b"" at end of stream
    (the peer half-closed); a reset raises ``ConnectionLost``. ``close`` releases the
    stream after a clean exchange, ``reset`` aborts it in both directions."""

    async def read(self, max_bytes: int) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close_write(self) -> None: ...

    async def reset(self) -> None: ...

    async def close(self) -> None: ...


async def read_exactly(stream: ByteStream, n: int, idle_timeout: float) -> bytes:
    """Read n bytes; EOF before that is a protocol violation, silence a timeout."""
    parts: list[bytes] = []
    remaining = n
    while remaining:
        chunk = await _read_some(stream, remaining, idle_timeout)
        if not chunk:
            raise TruncatedFrame(f"stream ended {remaining} bytes before the frame did")
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


async def _read_some(stream: ByteStream, max_bytes: int, idle_timeout: float) -> bytes:
    try:
        with trio.fail_after(idle_timeout):
            return await stream.read(max_bytes)
    except trio.TooSlowError as exc:
        raise PeerTimeout(f"peer silent for {idle_timeout} s") from exc


async def expect_eof(stream: ByteStream, idle_timeout: float) -> None:
    if await _read_some(stream, 1, idle_timeout):
        raise RemoteProtocolError("peer sent bytes after the end of its frame")


# -- request / response ---------------------------------------------------------------


async def send_request(stream: ByteStream, payload: bytes, max_response: int) -> None:
    max_response = min(max_response, 0xFFFF_FFFF)  # the field is u32; more means "any"
    await stream.write(_REQ_HEAD.pack(max_response, len(payload)) + payload)
    await stream.close_write()


async def read_request(stream: ByteStream, max_request: int, idle: float) -> tuple[bytes, int]:
    """Server side: the payload and the client's max_response."""
    max_response, length = _REQ_HEAD.unpack(await read_exactly(stream, _REQ_HEAD.size, idle))
    if length > max_request:
        raise OversizedFrame(f"request of {length} bytes exceeds our {max_request}")
    return await read_exactly(stream, length, idle), max_response


async def send_response(stream: ByteStream, status: int, body: bytes) -> None:
    await stream.write(_RESP_HEAD.pack(status, len(body)) + body)
    await stream.close_write()


async def read_response(stream: ByteStream, max_response: int, idle: float) -> bytes:
    status, length = _RESP_HEAD.unpack(await read_exactly(stream, _RESP_HEAD.size, idle))
    limit = max_response if status == OK else MAX_REFUSAL
    if status != OK and status not in _REFUSALS:
        raise RemoteProtocolError(f"unknown response status {status}")
    if length > limit:
        raise OversizedFrame(f"response of {length} bytes exceeds the {limit} we asked")
    body = await read_exactly(stream, length, idle)
    if status != OK:
        raise _REFUSALS[status](body.decode("utf-8", "replace"))
    return body


async def send_refusal(stream: ByteStream, status: int, reason: str) -> None:
    await send_response(stream, status, reason.encode()[:MAX_REFUSAL])


# -- blobs ----------------------------------------------------------------------------


async def send_blob_request(stream: ByteStream, sha256: bytes, size: int) -> None:
    await stream.write(_BLOB_REQ.pack(sha256, size))
    await stream.close_write()


async def read_blob_request(stream: ByteStream, idle: float) -> tuple[bytes, int]:
    sha256, size = _BLOB_REQ.unpack(await read_exactly(stream, _BLOB_REQ.size, idle))
    return sha256, size


async def send_blob_head(stream: ByteStream, size: int) -> None:
    await stream.write(_BLOB_HEAD.pack(OK, size))


async def send_blob_refusal(stream: ByteStream, status: int, reason: str) -> None:
    body = reason.encode()[:MAX_REFUSAL]
    await stream.write(_BLOB_HEAD.pack(status, len(body)) + body)
    await stream.close_write()


async def receive_blob(
    stream: ByteStream, sha256: bytes, size: int, sink: BlobSink, chunk: int, idle: float
) -> None:
    """Client side after the request: check the head, stream into ``sink`` while hashing.

    Reads never ask for more than the announced size, so a peer that sends more is caught
    by the trailing EOF check without us buffering its excess."""
    status, announced = _BLOB_HEAD.unpack(await read_exactly(stream, _BLOB_HEAD.size, idle))
    if status != OK:
        if status not in _REFUSALS:
            raise RemoteProtocolError(f"unknown blob status {status}")
        if announced > MAX_REFUSAL:
            raise OversizedFrame(f"blob refusal of {announced} bytes > {MAX_REFUSAL}")
        reason = await read_exactly(stream, announced, idle)
        raise _REFUSALS[status](reason.decode("utf-8", "replace"))
    if announced != size:
        raise BlobMismatch(f"peer announced {announced} bytes, we expected {size}")
    digest = hashlib.sha256()
    remaining = size
    while remaining:
        data = await _read_some(stream, min(chunk, remaining), idle)
        if not data:
            raise TruncatedFrame(f"blob ended {remaining} bytes short of {size}")
        digest.update(data)
        sink.write(data)
        remaining -= len(data)
    if await _read_some(stream, 1, idle):
        raise BlobMismatch(f"peer sent more than the announced {size} bytes")
    if digest.digest() != sha256:
        raise BlobMismatch(f"blob hashes to {digest.hexdigest()}, expected {sha256.hex()}")


# -- ping -----------------------------------------------------------------------------


async def ping(stream: ByteStream, payload: bytes, idle: float) -> float:
    """Client side: send ``payload``, read its echo; the seconds between the two (trio's
    clock). An echo of other bytes is garbage; one cut short, a truncated frame."""
    start = trio.current_time()
    await stream.write(payload)
    echo = await read_exactly(stream, len(payload), idle)
    rtt = trio.current_time() - start
    if echo != payload:
        raise RemoteProtocolError(f"ping of {len(payload)} bytes echoed as other bytes")
    return rtt


async def serve_ping(stream: ByteStream, idle: float) -> None:
    """Server side (the twin's; libp2p's host serves its own): echo each ``PING_LENGTH``
    bytes until the client half-closes."""
    while first := await _read_some(stream, PING_LENGTH, idle):
        rest = await read_exactly(stream, PING_LENGTH - len(first), idle)
        await stream.write(first + rest)
