"""A composite to bytes and back, exactly: what a checkpoint file holds (sans-IO).

A checkpoint is a local cache of the fold, never replicated: it must give back the very bytes
it was made from (float32 tensors raw, mixture weights as the exact float64 the fold computed),
and a damaged one must be refused, never half-read. The caller proves the content by
recomputing ``merge.digest.composite_digest`` of what ``read`` returns and comparing it with the
digest it filed the checkpoint under; this module only refuses bytes it cannot parse.

Layout (every field length-prefixed with a little-endian u64, as in ``merge.digest``)::

    "medforge-checkpoint/2", mode,
    fusion/stack: n_modules, then per module in sorted order:
        name, kind ("lora": A then B | "dense": W), per tensor:
        ndim (u64, always 2), each dim (u64), n_bytes (u64), raw little-endian float32
    mixture: n_members, per member: weight (8 bytes, float64 LE), member key,
        its adapter digest (32 bytes), its tensor bytes (u64)

A mixture keeps its members whole, so it stores only their keys (the caller's names for them:
the node uses commit ids) and ``read`` asks ``member(MemberRef)`` for each adapter. The
member's digest and size are there so that the caller can give a *deferred* adapter
(``merge.lora.DeferredModules``) and prove the checkpoint by its digest without reading a
single member: a restart then costs nothing per member. Version 1 (no digest or size per
member; otherwise the same) is still read, with ``MemberRef.digest`` ``None``. Writing streams
the tensors' own memory (``chunks``) and reading fills fresh tensors from the source, so neither
holds a second copy of the composite.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import torch

from merge.dense import DenseModule
from merge.digest import adapter_digest
from merge.errors import CheckpointError, MergeError
from merge.fold import Composite, Module
from merge.lora import LoraAdapter, LoraModule, adapter_nbytes
from merge.spec import MODES

TAG = b"medforge-checkpoint/2"
_TAG_V1 = b"medforge-checkpoint/1"  # mixture members without digest and size
_MAX_NAME = 4096  # bytes of a module name or member key: far above any real one
_KINDS = {b"lora": 2, b"dense": 1}  # kind -> number of tensors

Chunk = bytes | memoryview


@dataclass(frozen=True)
class MemberRef:
    """A mixture member as a checkpoint names it."""

    key: bytes
    digest: str | None  # its adapter digest (hex); None in a version 1 checkpoint
    nbytes: int | None  # its tensor bytes; None in version 1


MemberLookup = Callable[[MemberRef], LoraAdapter]


def chunks(c: Composite, member_keys: Sequence[bytes] = ()) -> Iterator[Chunk]:
    """The checkpoint bytes of ``c`` in pieces (tensor data as views of the tensors: consume
    each chunk before asking for the next). A mixture needs one key per member."""
    yield _field(TAG) + _field(c.mode.encode())
    if c.mode == "mixture":
        if len(member_keys) != len(c.members):
            raise CheckpointError(f"{len(member_keys)} keys for {len(c.members)} members")
        yield _u64(len(c.members))
        for weight, key, m in zip(c.weights, member_keys, c.members, strict=True):
            facts = bytes.fromhex(adapter_digest(m)) + _u64(adapter_nbytes(m))
            yield struct.pack("<d", weight) + _field(key) + facts
        return
    yield _u64(len(c.modules))
    for name in sorted(c.modules):
        module: Module = c.modules[name]
        tensors: tuple[torch.Tensor, ...]
        if isinstance(module, DenseModule):
            kind, tensors = b"dense", (module.W,)
        elif isinstance(module, LoraModule):
            kind, tensors = b"lora", (module.A, module.B)
        else:
            raise CheckpointError(f"module {name!r} is a {type(module).__name__}")
        yield _field(name.encode()) + _field(kind)
        for t in tensors:
            yield from _tensor(t)


def encode(c: Composite, member_keys: Sequence[bytes] = ()) -> bytes:
    return b"".join(chunks(c, member_keys))


def write(c: Composite, sink: BinaryIO, member_keys: Sequence[bytes] = ()) -> None:
    for chunk in chunks(c, member_keys):
        sink.write(chunk)


def decode(data: bytes, member: MemberLookup | None = None) -> Composite:
    return read(io.BytesIO(data), member)


def read(source: BinaryIO, member: MemberLookup | None = None) -> Composite:
    """The composite in ``source`` (seekable: its length bounds every allocation). Raises
    ``CheckpointError`` for bytes that are not a whole checkpoint; errors of ``member`` (a
    mixture's adapter that cannot be had) pass through as they are."""
    reader = _Reader(source)
    tag = reader.field(len(TAG))
    if tag not in (TAG, _TAG_V1):
        raise CheckpointError("not a medforge checkpoint (or another version)")
    mode = reader.field(16).decode(errors="replace")
    if mode not in MODES:
        raise CheckpointError(f"unknown mode {mode!r}")
    try:
        if mode == "mixture":
            c = _mixture(reader, member, facts=tag == TAG)
        else:
            c = _modules(reader, mode)
    except (MergeError, TypeError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"inconsistent content: {exc}") from exc
    reader.end()
    return c


def _mixture(reader: _Reader, member: MemberLookup | None, *, facts: bool) -> Composite:
    if member is None:
        raise CheckpointError("a mixture checkpoint needs a way to get its members")
    weights, refs = [], []
    for _ in range(reader.count(8 + 8 + (32 + 8 if facts else 0))):
        (weight,) = struct.unpack("<d", reader.take(8))
        weights.append(weight)
        key = reader.field(_MAX_NAME)
        if facts:
            refs.append(MemberRef(key, reader.take(32).hex(), reader.u64()))
        else:
            refs.append(MemberRef(key, None, None))
    members = tuple(member(ref) for ref in refs)  # after the whole file parsed: no half reads
    return Composite("mixture", members=members, weights=tuple(weights))


def _modules(reader: _Reader, mode: str) -> Composite:
    modules: dict[str, Module] = {}
    for _ in range(reader.count(8 + 8 + 8)):
        name = reader.field(_MAX_NAME).decode()
        kind = reader.field(8)
        if kind not in _KINDS or name in modules:
            raise CheckpointError(f"module {name!r}: kind {kind!r} (or named twice)")
        tensors = [reader.tensor() for _ in range(_KINDS[kind])]
        modules[name] = DenseModule(tensors[0]) if kind == b"dense" else LoraModule(*tensors)
    return Composite(mode, modules=modules)


class _Reader:
    """Exact reads from a seekable source whose length bounds what it may claim to hold."""

    def __init__(self, source: BinaryIO) -> None:
        start = source.tell()
        self._left = source.seek(0, io.SEEK_END) - start
        source.seek(start)
        self._source = source

    def take(self, n: int) -> bytes:
        if n > self._left:
            raise CheckpointError(f"truncated: {n} bytes wanted, {self._left} left")
        data = self._source.read(n)
        if len(data) != n:
            raise CheckpointError("truncated while reading")
        self._left -= n
        return data

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.take(8))[0])

    def field(self, cap: int) -> bytes:
        n = self.u64()
        if n > cap:
            raise CheckpointError(f"a field of {n} bytes where at most {cap} fit")
        return self.take(n)

    def count(self, min_bytes_each: int) -> int:
        """A number of items, each at least ``min_bytes_each`` bytes long (so a damaged count
        cannot make us loop or allocate past the end of the source)."""
        n = self.u64()
        if n * min_bytes_each > self._left:
            raise CheckpointError(f"{n} items cannot fit in {self._left} bytes")
        return n

    def tensor(self) -> torch.Tensor:
        if self.u64() != 2:
            raise CheckpointError("a module's tensor is 2-d")
        rows, cols, size = self.u64(), self.u64(), self.u64()
        if size != rows * cols * 4 or size > self._left:
            raise CheckpointError(f"a [{rows}, {cols}] float32 tensor said {size} bytes")
        out = np.empty((rows, cols), dtype="<f4")
        view = out.data.cast("B")
        done = 0
        while done < size:  # readinto may return less than asked (pipes, some files)
            got = self._source.readinto(view[done:])  # type: ignore[attr-defined]
            if not got:
                raise CheckpointError("truncated inside a tensor")
            done += got
        self._left -= size
        return torch.from_numpy(out.astype(np.float32, copy=False))

    def end(self) -> None:
        if self._left:
            raise CheckpointError(f"{self._left} bytes after the end of the checkpoint")


def _tensor(t: torch.Tensor) -> Iterator[Chunk]:
    if t.dtype != torch.float32 or t.dim() != 2:
        raise CheckpointError(f"a module's tensor is 2-d float32, got {t.dtype} {t.dim()}-d")
    arr = np.ascontiguousarray(t.detach().numpy(), dtype="<f4")
    yield _u64(2) + _u64(arr.shape[0]) + _u64(arr.shape[1]) + _u64(arr.nbytes)
    yield arr.data.cast("B")  # no copy of the tensor data


def _field(data: bytes) -> bytes:
    return _u64(len(data)) + data


def _u64(n: int) -> bytes:
    return struct.pack("<Q", n)
