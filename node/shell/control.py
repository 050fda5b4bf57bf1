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

from node.errors import ControlProtocolError, NodeNotRunning, NodeRefused

MAX_REQUEST = 1 << 20
Handler = Callable[[dict[str, Any]], Awaitable[Any]]


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
        except NodeRefused as exc:
            reply = {"ok": False, "error": str(exc), "kind": type(exc).__name__}
        except Exception as exc:  # noqa: BLE001 - an operator's bad request must not kill the node
            reply = {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "kind": type(exc).__name__,
            }
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
            raise NodeRefused("request too large")
    try:
        request = json.loads(data)
    except json.JSONDecodeError as exc:
        raise NodeRefused(f"malformed request: {exc}") from exc
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        raise NodeRefused('a request is a JSON object with an "op"')
    return request


# -- client ---------------------------------------------------------------------------------


def call(path: Path, op: str, timeout: float = 600.0, **params: Any) -> Any:
    """Send one request to the node at ``path`` and return its result. Raises
    ``NodeNotRunning`` when nothing answers, ``NodeRefused`` with the node's reason when it
    refuses, ``ControlProtocolError`` when the answer is not a reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NodeNotRunning(f"no node is running on {path.parent}") from exc
        sock.sendall(json.dumps({"op": op, **params}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        reply = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ControlProtocolError("the node closed the connection without an answer") from exc
    if not isinstance(reply, dict) or "ok" not in reply:
        raise ControlProtocolError(f"not a control reply: {data[:80]!r}")
    if not reply["ok"]:
        raise NodeRefused(str(reply.get("error")))
    return reply["result"]
