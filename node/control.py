"""The local control endpoint the CLI talks to: a unix socket in the node's home.

Reachable only by the operator: the socket is created mode 0600 inside the 0700 home.
Protocol: one JSON request per connection, one JSON line back::

    -> {"op": "status"}                 <- {"ok": true, "result": {...}}
    -> {"op": "nope"}                   <- {"ok": false, "error": "unknown op 'nope'"}

The server side is trio (it lives in the node); the client side is a plain blocking socket so
the CLI does not need an event loop.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from node.errors import NodeError

MAX_REQUEST = 1 << 20
Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlError(NodeError):
    """The node is not running, or it refused the request (the message says why)."""


class NodeNotRunning(ControlError):
    """No node answers on this home's control socket."""


# -- server ---------------------------------------------------------------------------------


async def serve(
    path: Path, handler: Handler, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve requests on ``path`` until cancelled; a stale socket file is replaced."""
    _remove(path)
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(path))
    # The home is 0700, so nobody else could reach the socket even before this chmod.
    os.chmod(path, 0o600)
    listener.listen(16)
    listeners = [trio.SocketListener(listener)]
    task_status.started()
    try:
        await trio.serve_listeners(lambda stream: _answer(stream, handler), listeners)
    finally:
        _remove(path)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


async def _answer(stream: trio.abc.Stream, handler: Handler) -> None:
    async with stream:
        try:
            request = await _read_request(stream)
            reply = {"ok": True, "result": await handler(request)}
        except ControlError as exc:
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - an operator's bad request must not kill the node
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        try:
            await stream.send_all(json.dumps(reply).encode() + b"\n")
        except trio.BrokenResourceError:
            pass  # the client went away; nothing to tell it


async def _read_request(stream: trio.abc.Stream) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ControlError("request too large")
    try:
        request = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ControlError(f"malformed request: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        raise ControlError('a request is a JSON object with an "op"')
    return request


# -- client ---------------------------------------------------------------------------------


def call(path: Path, op: str, timeout: float = 600.0, **params: Any) -> Any:
    """Send one request to the node at ``path``; return its result or raise ControlError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NodeNotRunning(f"no node is running on {path.parent}") from None
        sock.sendall(json.dumps({"op": op, **params}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        reply = json.loads(data)
    except json.JSONDecodeError:
        raise ControlError("the node closed the connection without an answer") from None
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error")))
    return reply["result"]
