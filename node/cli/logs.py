"""How `medforge node run` logs: one stream (stderr), text for people or JSON lines.

With ``--log-json`` everything the process reports reaches that stream as one JSON object
per line, so a log shipper never has to parse two formats: log records (with the traceback,
if any, as a string field rather than extra lines), Python warnings (``captureWarnings``: a
library's ``warnings.warn`` would otherwise print raw text), and the node's ``ready`` event
(also printed on stdout, where supervisors and tests wait for it).

libp2p logs at INFO what an operator does not need (its ``auto_connector`` says "initiating
200 new dials" every 10 s); its loggers are held at ERROR. The node logs what matters itself:
peers up/down with address, each forge item, each refusal with its reason.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from node.cli.output import terminal_safe

NOISY = ("libp2p", "multiaddr", "async_service")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg (+ exc, stack when present)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        event = getattr(record, "event", None)
        if isinstance(event, dict):
            out["event"] = event
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``, terminal-safe: a log line quotes names a peer chose (its commit's
    task, a refusal's reason), and one with an escape sequence must not act on the
    operator's terminal (``terminal_safe``). JSON lines escape them already."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return terminal_safe(super().format(record))


def setup(as_json: bool) -> None:
    """Route every record and warning to one stderr handler in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.ERROR)


def log_event(event: dict[str, Any]) -> None:
    """An event a machine reads (e.g. ``ready``), also as a log record on the one stream."""
    logging.getLogger("node").info(json.dumps(event), extra={"event": event})
