"""`terminal_safe`: what the CLI prints for people keeps text readable and escapes only
what a terminal would act on."""

from __future__ import annotations

import logging

from node.cli.logs import TextFormatter
from node.cli.output import terminal_safe


def test_plain_text_newlines_tabs_and_other_scripts_pass_unchanged() -> None:
    text = "v1  alice  task icd10-chapters\n\tKrankenhaus Zürich, 東京病院, مستشفى 👍"
    assert terminal_safe(text) == text


def test_control_separators_and_bidi_overrides_become_escapes() -> None:
    assert terminal_safe("a\x1b[31mb\rc\x00d\x7f\x9b") == "a\\x1b[31mb\\x0dc\\x00d\\x7f\\x9b"
    assert terminal_safe("x\u2028y\u2029z") == "x\\u2028y\\u2029z"
    assert terminal_safe("\u202eabc\u2066\u200f") == "\\u202eabc\\u2066\\u200f"


def test_the_text_log_format_escapes_what_a_peer_named() -> None:
    record = logging.LogRecord("node", logging.INFO, __file__, 1, "commit %s", ("t\x1b[2J",), None)
    line = TextFormatter().format(record)
    assert line.endswith("INFO    node: commit t\\x1b[2J")
    assert "\x1b" not in line
