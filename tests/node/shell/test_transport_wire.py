"""Properties of the frame codecs: honest frames round-trip over any chunking, and any
bytes a peer can send end in a value or a typed error, never in a crash or an overrun."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio
from hypothesis import given
from hypothesis import strategies as st

from node.errors import RemoteProtocolError, RemoteRefused
from node.shell.transport import wire

T = TypeVar("T")
CHUNKS = st.lists(st.integers(min_value=1, max_value=64), max_size=20)


class FakeStream:
    """Replays ``incoming`` cut at the given chunk sizes; records what is written."""

    def __init__(self, incoming: bytes = b"", chunks: list[int] | None = None) -> None:
        self._incoming = incoming
        self._chunks = list(chunks or [])
        self.written = bytearray()
        self.write_closed = False

    async def read(self, max_bytes: int) -> bytes:
        await trio.lowlevel.checkpoint()
        size = min(max_bytes, self._chunks.pop(0) if self._chunks else max_bytes)
        out, self._incoming = self._incoming[:size], self._incoming[size:]
        return out

    async def write(self, data: bytes) -> None:
        self.written += data

    async def close_write(self) -> None:
        self.write_closed = True

    async def reset(self) -> None:
        pass

    async def close(self) -> None:
        pass


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return trio.run(fn)


@given(st.binary(max_size=300), st.integers(0, (1 << 32) - 1), CHUNKS)
def test_requests_round_trip(payload: bytes, max_response: int, chunks: list[int]) -> None:
    sent = FakeStream()
    run(lambda: wire.send_request(sent, payload, max_response))
    assert sent.write_closed  # the half-close ends the request
    received = FakeStream(bytes(sent.written), chunks)
    assert run(lambda: wire.read_request(received, 300, 1.0)) == (payload, max_response)


@given(st.binary(max_size=300), CHUNKS)
def test_responses_round_trip(body: bytes, chunks: list[int]) -> None:
    sent = FakeStream()
    run(lambda: wire.send_response(sent, wire.OK, body))
    assert (
        run(lambda: wire.read_response(FakeStream(bytes(sent.written), chunks), 300, 1.0)) == body
    )


@given(st.binary(max_size=200), CHUNKS)
def test_garbage_requests_only_raise_protocol_errors(data: bytes, chunks: list[int]) -> None:
    async def attempt() -> None:
        try:
            payload, _ = await wire.read_request(FakeStream(data, chunks), 64, 1.0)
        except RemoteProtocolError:
            return
        assert len(payload) <= 64

    run(attempt)


@given(st.binary(max_size=200), CHUNKS)
def test_garbage_responses_only_raise_typed_errors(data: bytes, chunks: list[int]) -> None:
    async def attempt() -> None:
        try:
            body = await wire.read_response(FakeStream(data, chunks), 64, 1.0)
        except (RemoteProtocolError, RemoteRefused):
            return
        assert len(body) <= 64

    run(attempt)


@given(st.binary(max_size=200), st.integers(0, 100), CHUNKS)
def test_garbage_blobs_never_overrun_the_sink(data: bytes, size: int, chunks: list[int]) -> None:
    sha = hashlib.sha256(data[9 : 9 + size]).digest()
    sink = io.BytesIO()

    async def attempt() -> None:
        try:
            await wire.receive_blob(FakeStream(data, chunks), sha, size, sink, 16, 1.0)
        except (RemoteProtocolError, RemoteRefused):
            return
        assert hashlib.sha256(sink.getvalue()).digest() == sha

    run(attempt)
    assert len(sink.getvalue()) <= size


@given(st.binary(max_size=500), CHUNKS)
def test_honest_blobs_arrive_over_any_chunking(blob: bytes, chunks: list[int]) -> None:
    sent = FakeStream()
    run(lambda: wire.send_blob_head(sent, len(blob)))
    sink = io.BytesIO()
    stream = FakeStream(bytes(sent.written) + blob, chunks)
    sha = hashlib.sha256(blob).digest()
    run(lambda: wire.receive_blob(stream, sha, len(blob), sink, 7, 1.0))
    assert sink.getvalue() == blob
