"""``medforge doctor``: is this home ready to run a node, and is its node well?

``diagnose(home)`` runs every check and returns a frozen ``Report`` (``report.py``): one
``Check`` per fact, ``ok``, ``warn``, ``fail`` or ``skip``, with the reason and, when not ok,
what to do. The checks, in order:

    home        the directory: owned by the caller, mode 0700 (the control socket relies on it)
    identity    identity.pem: owned by the caller, no group/other bits; loads (passphrase)
    config      config.toml parses (``Home.config``)
    listen      the listen address parses; its port is free, or held by this home's node
    metrics     metrics_port (if set): free, or this home's node serves /metrics on it
    bootstrap   each address parses, names /p2p/<peer id>, and accepts a TCP connect
    relay       the same, for relay addresses (if config.toml names any)
    genesis     present, decodes with its signatures, and its spec is one nodes accept
    roster      this identity is a member of the roster in force (the running node's, else
                the genesis plus the roster records in the store)
    base model  the model the genesis names is here and has the network's fingerprint
                (loads the model: only when it is here, and not with ``model=False``)
    store       ``check_store`` read-only, as ``medforge store check``: every blob rehashed
    disk        free space on the home's filesystem
    node        whether a node answers on the home's control socket

Nothing here writes to the home. The slow checks are the base model (seconds: torch) and the
store (it reads every blob); the TCP probes run at once, each bounded by ``dial_timeout``.
The package lives in node/cli, beside the command, because it asks every layer below: a
genesis spec and a base model are judged by merge/, whose errors only this layer may catch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from node.cli.doctor import local, membership, net
from node.cli.doctor.report import Check, Facts, Report
from node.shell.home import Home
from node.shell.netcheck import DIAL_TIMEOUT

Step = Callable[[Facts], Iterator[Check]]


def diagnose(home: Home, *, model: bool = True, dial_timeout: float = DIAL_TIMEOUT) -> Report:
    """Every check on ``home``, which must hold an identity (``HomeError`` otherwise)."""
    facts = Facts(home.require())
    facts.node, facts.node_error = local.ask_node(home)
    steps: list[Step] = [
        local.home_dir,
        local.identity,
        local.config,
        net.listen,
        net.metrics,
        lambda f: net.peers(f, "bootstrap", dial_timeout),
        lambda f: net.peers(f, "relay", dial_timeout),
        membership.genesis,
        membership.roster,
        lambda f: membership.base_model(f, model),
        local.store,
        local.disk,
        local.node,
    ]
    checks = [check for step in steps for check in step(facts)]
    return Report(str(home.path), tuple(checks))


__all__ = ["Check", "Report", "diagnose"]
