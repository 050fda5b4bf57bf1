"""One digest names a composite: sha256 over its canonical serialization.

Canonical form (every field length-prefixed with a little-endian u64, so no two different
composites share bytes)::

    "medforge-composite/1", mode,
    fusion/stack: n_modules, then per module in sorted order:
        factored: name, then for A and B: dtype name, ndim, each dim (u64 LE), raw
            little-endian bytes
        dense (stack with compaction): name, "dense", then W as a tensor above
    mixture: n_members, each weight as a float64 (LE), each member's adapter digest (32 bytes)

    adapter digest: "medforge-adapter/1", base, then the modules as above.

Mixture weights are hashed as the exact float64 values the fold computed; the adapter's
``name`` (an error label) is not part of anything hashed. A factored module's next field after
its name is a dtype name (``"float32"``), a dense one's is ``"dense"``: the two never share
bytes, and a composite with no dense module has exactly the bytes it had before compaction.
"""

from __future__ import annotations

import hashlib
import struct
import weakref
from collections.abc import Mapping

import numpy as np
import torch

from merge.dense import DenseModule
from merge.fold import Composite, Module
from merge.lora import DeferredModules, LoraAdapter

_COMPOSITE_TAG = b"medforge-composite/1"
_ADAPTER_TAG = b"medforge-adapter/1"
_DENSE_TAG = b"dense"


def composite_digest(c: Composite) -> str:
    """Hex sha256 of the composite's canonical serialization."""
    h = hashlib.sha256()
    _field(h, _COMPOSITE_TAG)
    _field(h, c.mode.encode())
    if c.mode == "mixture":
        _u64(h, len(c.members))
        for w in c.weights:
            _field(h, struct.pack("<d", w))
        for member in c.members:
            _field(h, bytes.fromhex(adapter_digest(member)))
    else:
        _modules(h, c.modules)
    return h.hexdigest()


def adapter_digest(a: LoraAdapter) -> str:
    """Hex sha256 of one validated adapter (base + modules); remembered per adapter object.

    A mixture's digest names every member's, and is taken after every commit: unremembered,
    that is O(N) member hashes per commit (4 s at 1000 CLIP-sized members). An adapter is
    never modified once loaded (the fold is pure), so its digest is a property of the object;
    the memo holds it weakly and dies with it."""
    if isinstance(a.modules, DeferredModules):
        return a.modules.digest  # what it was made with: its loader checks the loaded bytes
    known = _ADAPTER_DIGESTS.get(a)
    if known is None:
        known = _ADAPTER_DIGESTS[a] = _hash_adapter(a)
    return known


_ADAPTER_DIGESTS: weakref.WeakKeyDictionary[LoraAdapter, str] = weakref.WeakKeyDictionary()


def _hash_adapter(a: LoraAdapter) -> str:
    h = hashlib.sha256()
    _field(h, _ADAPTER_TAG)
    _field(h, a.base.encode())
    _modules(h, a.modules)
    return h.hexdigest()


def _modules(h: hashlib._Hash, modules: Mapping[str, Module]) -> None:
    _u64(h, len(modules))
    for name in sorted(modules):
        _field(h, name.encode())
        m = modules[name]
        if isinstance(m, DenseModule):
            _field(h, _DENSE_TAG)
            _tensor(h, m.W)
            continue
        for t in (m.A, m.B):
            _tensor(h, t)


def _tensor(h: hashlib._Hash, t: torch.Tensor) -> None:
    _field(h, b"float32")
    _u64(h, t.dim())
    for d in t.shape:
        _u64(h, int(d))
    if t.dtype != torch.float32:
        raise TypeError(f"canonical tensors are float32, got {t.dtype}")
    # Little-endian on any host; a no-op (no copy) on the usual little-endian one.
    arr = np.ascontiguousarray(t.detach().numpy(), dtype="<f4")
    _u64(h, arr.nbytes)
    h.update(arr.data)  # no copy of the tensor data


def _field(h: hashlib._Hash, data: bytes) -> None:
    _u64(h, len(data))
    h.update(data)


def _u64(h: hashlib._Hash, n: int) -> None:
    h.update(struct.pack("<Q", n))
