"""`medforge node run`, `medforge status`, `medforge log`, `medforge export`."""

from __future__ import annotations

import argparse
import datetime
import json
import signal
from pathlib import Path
from typing import Any

from node.cli import logs
from node.cli.output import add_home, add_json, describe_training, emit, human_bytes
from node.errors import HomeError, PortInUse, UsageError
from node.forge import claim
from node.shell.control import call
from node.shell.home import Config, Home


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    node = sub.add_parser("node", help="run this institution's node")
    cmds = node.add_subparsers(dest="node_command", required=True)
    run = cmds.add_parser("run", help="run the node in the foreground (SIGTERM/Ctrl-C stops it)")
    add_home(run)
    run.add_argument(
        "--log-json",
        action="store_true",
        help="log as JSON lines on stderr (records, warnings, tracebacks, the ready event)",
    )
    run.add_argument(
        "--sync-interval", type=float, default=30.0, help="seconds between anti-entropy rounds"
    )
    run.set_defaults(func=run_node)

    stop = cmds.add_parser(
        "stop",
        help="ask the running node to stop, and wait until it has",
        description="Ask the node on --home to stop (as SIGTERM does) and wait until its "
        "control socket no longer answers. Exit 0 once stopped, 3 if no node was running, "
        "5 if it still answers after --timeout seconds.",
    )
    add_home(stop)
    stop.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for it (default 30)"
    )
    add_json(stop)
    stop.set_defaults(func=run_stop)

    status = sub.add_parser("status", help="peers, records, composite digest, convergence")
    add_home(status)
    add_json(status)
    status.set_defaults(func=run_status)

    log = sub.add_parser(
        "log",
        help="the forge items v1..vN: author, task, coefficients, when received, the author's "
        "claim (losses, accuracy per task on the distilled sets) and its warnings",
    )
    add_home(log)
    add_json(log)
    log.set_defaults(func=run_log)

    publish = sub.add_parser(
        "publish", help="hand roster updates, revocations or commit bundles to the running node"
    )
    add_home(publish)
    publish.add_argument(
        "records", type=Path, nargs="+", help="files from `roster` or `revoke`, or commit bundles"
    )
    publish.set_defaults(func=run_publish)

    export = sub.add_parser(
        "export",
        help="write the current composite (PEFT dir or mixture, or --merged model) with a "
        "model card README.md",
        description="Write the composite the node serves: a PEFT adapter whose config names "
        "the base model the genesis names (fusion, stack), one PEFT adapter per member plus "
        "mixture.json (mixture), or the base with ΔW merged in (--merged). Every export "
        "carries README.md: tasks and classes, network, forge item, digest, commits, and a "
        "loader snippet.",
    )
    add_home(export)
    export.add_argument("--out", type=Path, required=True)
    how = export.add_mutually_exclusive_group()
    how.add_argument(
        "--merged",
        action="store_true",
        help="write the base model with the composite added into its weights, as a "
        "Hugging Face checkpoint (fusion/stack; the node loads the network's base)",
    )
    how.add_argument(
        "--max-rank",
        type=int,
        default=None,
        metavar="R",
        help="cap every PEFT module's rank at R (best rank-R approximation; default: exact)",
    )
    add_json(export)
    export.set_defaults(func=run_export)


def _call(args: argparse.Namespace, op: str, **params: Any) -> Any:
    return call(Home(Path(args.home)).control_path, op, **params)


def run_node(args: argparse.Namespace) -> int:
    import trio

    from node.core.protocol import CoreConfig
    from node.shell.runner import run_node
    from node.shell.service import NodeService

    logs.setup(args.log_json)
    from node.shell.transport.libp2p import ensure_port_free

    home = Home(Path(args.home)).require()
    config = _preflight(home)
    ensure_port_free(config.listen)
    service = NodeService(
        home,
        core_config=CoreConfig(sync_interval=args.sync_interval, strangers=config.strangers),
    )

    async def main() -> None:
        # The signal receiver is open before "ready" is printed: a supervisor that sends
        # SIGTERM as soon as it reads "ready" must get a clean stop, not the default kill.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(run_node, service)
                ready = {"event": "ready", "listen": list(service.listen_addrs)}
                print(json.dumps(ready), flush=True)
                logs.log_event(ready)

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        service.stop()
                        return

                # A signal or `medforge node stop` (the control socket) ends the node; either
                # way the process exits once the service has closed everything.
                nursery.start_soon(stop_on_signal)
                await service.stopped.wait()
                nursery.cancel_scope.cancel()

    trio.run(main)
    return 0


def _node_pid(path: Path) -> int | None:
    """The pid of the process serving the control socket (Linux SO_PEERCRED), or None."""
    import socket
    import struct

    if not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(path))
            cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid = int(struct.unpack("3i", cred)[0])
    return pid if pid > 0 else None


def _gone(path: Path, pid: int | None) -> bool:
    """Whether the node has stopped: its process has exited (when its pid is known), else its
    control socket no longer answers."""
    import os

    from node.errors import ControlError, NodeNotRunning

    if pid is not None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # another user's process that still exists
        try:  # exited, but its parent has not reaped it yet (a zombie)
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, IndexError):
            return False
    try:
        call(path, "status", timeout=2)
    except NodeNotRunning:
        return True
    except (ControlError, OSError):
        pass  # closing down: the socket accepts but no longer answers
    return False


def run_stop(args: argparse.Namespace) -> int:
    import time

    from node.cli import Exit

    home = Home(Path(args.home))
    name = home.config().name if home.config_path.exists() else str(home.path)
    start = time.monotonic()
    pid = _node_pid(home.control_path)
    call(home.control_path, "stop", timeout=10)  # no node: NodeNotRunning, exit 3
    while time.monotonic() - start < args.timeout:
        if _gone(home.control_path, pid):
            took = time.monotonic() - start
            data = {"stopped": True, "home": str(home.path), "pid": pid, "seconds": round(took, 3)}
            emit(args, data, f"node {name} on {home.path} stopped ({took:.1f} s)")
            return 0
        time.sleep(0.1)
    data = {"stopped": False, "home": str(home.path), "pid": pid, "seconds": args.timeout}
    emit(
        args,
        data,
        f"node {name} on {home.path} was asked to stop but is still running after "
        f"{args.timeout:g} s: see its log (SIGTERM{f' {pid}' if pid else ''} next)",
    )
    return Exit.NODE_FAILED


def _preflight(home: Home) -> Config:
    """config.toml as the node will use it, refused (exit 2, one line) before anything starts
    when it would only fail later: TOML that does not parse, a listen, announce, bootstrap or
    relay address that is no TCP multiaddr (a bad peer id would be redialled forever), a
    metrics port another process holds. `medforge doctor` runs the same checks and more."""
    import tomllib

    from node.shell import netcheck
    from node.shell.transport.libp2p import ensure_port_free

    try:
        config = home.config()
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        what = f"no key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise HomeError(f"{home.config_path}: {what}") from exc
    addrs = [("listen", config.listen)]
    addrs += [("announce", a) for a in config.announce]
    addrs += [("bootstrap", b) for b in config.bootstrap]
    addrs += [("relays", r) for r in config.relays]
    for key, addr in addrs:
        try:
            netcheck.parse_addr(addr)
        except netcheck.AddrError as exc:
            raise HomeError(f"config.toml: {key}: {exc}") from None
    port = config.metrics_port
    if port is not None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
            raise HomeError(f"config.toml: metrics_port = {port!r} is not a TCP port")
        try:
            ensure_port_free(f"/ip4/{config.metrics_host}/tcp/{port}")  # ip4 only, else skipped
        except PortInUse as exc:
            raise PortInUse(f"config.toml: metrics_port: {exc}") from exc
    return config


def _peer_line(peer: dict[str, Any]) -> str:
    heard = "never heard" if peer["heard_s_ago"] is None else f"heard {peer['heard_s_ago']} s ago"
    where = peer.get("link") or "no address"
    role = "member" if peer["member"] else "not a member"
    rtt = peer.get("rtt_ms")  # None: not pinged yet, no answer; absent: an older node
    return f"  {peer['name']:<14} {where}  {heard}, {role}" + (
        "" if rtt is None else f", rtt {_ms(rtt)}"
    )


def _ms(ms: float) -> str:
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.0f} ms"


def _merge_latency(s: dict[str, Any]) -> list[str]:
    """One line on the commit-to-merge histogram, once a commit was merged in this run."""
    h = s.get("commit_merge_latency")
    if not h or not h["count"]:
        return []
    return [
        f"merged      {h['count']} commit(s) since start, {h['sum'] / h['count']:.2f} s on "
        "average from learning of one to serving a composite with it"
    ]


def run_status(args: argparse.Namespace) -> int:
    s = _call(args, "status")
    peers = (
        ", ".join(f"{p['name']}{'' if p['same_composite'] else ' (differs)'}" for p in s["peers"])
        or "none"
    )
    lines = [
        f"{s['name']}  ({s['peer_id']})  network {s['network']}  up {s['uptime_s']} s",
        f"peers       {s['peers_connected']} connected ({s['peers_live']} heard from lately), "
        f"{s['peers_known']} known: {peers}",
        *(_peer_line(peer) for peer in s["peers"]),
        f"roster      epoch {s['roster_epoch']}, {len(s['members'])} members "
        f"({', '.join(s['members'])}), threshold {s['threshold']}",
        f"records     {s['records']} held, {s['pending_records']} pending, "
        f"{s['rejected_records']} rejected; blobs {s['blobs']}, missing {s['missing_blobs']}",
        f"forge item  v{s['forge_item']}  head {s['head'][:16]}  orphans {s['orphans']}",
        f"composite   {s['composite_digest'] or '(merging)'}",
        f"            {s['composite_representation']}; {human_bytes(s['composite_bytes'])}",
        *(
            [f"merge       FAILING, serving {s['serving_digest'][:16]}: {s['merge_error']}"]
            if s["merge_error"]
            else []
        ),
        "frames      "
        + (", ".join(f"{k} {v}" for k, v in s["frames"].items() if v) or "no faults"),
        *(
            [f"EQUIVOCATION by {', '.join(s['equivocators'])}: their clashing commits are out"]
            if s["equivocators"]
            else []
        ),
        *(
            [f"store       recovered at start: {s['store_recovery']}"]
            if not s["store_recovery"]["clean"]
            else []
        ),
        f"invalid     {s['invalid_commits']} commit(s) refused"
        + (
            " (" + ", ".join(f"{n}: {k}" for n, k in s["invalid_by_author"].items()) + ")"
            if s["invalid_by_author"]
            else ""
        ),
        *_merge_latency(s),
        f"converged   with {s['converged_with']}/{s['peers_connected']} peers",
        f"set root    {s['set_root'][:32]}",
    ]
    if s["last_errors"]:
        lines.append("last errors " + "; ".join(s["last_errors"]))
    emit(args, s, "\n".join(lines))
    return 0


def run_log(args: argparse.Namespace) -> int:
    entries = _call(args, "log")
    lines = ["v0  (base model)"]
    for e in entries:
        w1, w2 = e["coeffs"]
        tag = "  orphan" if e["orphan"] else ""
        if e.get("supersedes"):  # the orphan it replaced (a rebase, or `commit --supersedes`)
            tag += f"  supersedes {e['supersedes'][:12]}"
        training = e.get("training")  # a node of an older build does not say
        trained = f"  {describe_training(training)}" if training else ""
        lines.append(
            f"v{e['item']:<3} {e['author']:<16} task {e['task']:<20} "
            f"w=({w1:+.4f}, {w2:+.4f}) commit {e['commit'][:12]}{tag}{trained}"
        )
        figures = claim.decode(e["objective"], e["task"])
        e["task_accuracy"] = [f.as_dict() for f in figures]
        e["warnings"] = claim.warnings(figures)
        lines.extend(f"     {line}" for line in _log_details(e, figures))
    excluded = _call(args, "status")["excluded"]
    for e in excluded:
        lines.append(
            f"out  {e['author']:<16} seq {e['seq']:<3} ({e['why']}) commit {e['commit'][:12]}"
        )
    emit(args, {"items": entries, "excluded": excluded}, "\n".join(lines))
    return 0


_LOSSES = ("loss_before", "loss_after", "loss_scalar", "evaluations")


def _log_details(entry: dict[str, Any], figures: list[claim.TaskAccuracy]) -> list[str]:
    """Under an item: when this node received it, the author's claim (losses, per-task
    accuracy on the distilled sets) and the warnings that claim raises."""
    lines = []
    received = entry.get("received_at")  # a node of an older build does not say
    if isinstance(received, int | float):
        when = datetime.datetime.fromtimestamp(received, datetime.UTC)
        lines.append(f"received {when:%Y-%m-%d %H:%M:%S} UTC")
    objective = entry["objective"]
    if "loss_before" in objective and "loss_after" in objective:
        claimed = f"claim: loss {objective['loss_before']:.4f} -> {objective['loss_after']:.4f}"
        if "loss_scalar" in objective:
            claimed += f" (scalar pair: {objective['loss_scalar']:.4f})"
        lines.append(claimed + f", {int(objective.get('evaluations', 0))} evaluations")
    elif figures:
        lines.append("claim: coefficients given and scored, not searched")
    else:
        lines.append("claim: none (coefficients given, not searched)")
    per_task = (claim.BEFORE, claim.AFTER)
    others = {k: v for k, v in objective.items() if k not in _LOSSES and not k.startswith(per_task)}
    if others:
        lines.append("claim: " + ", ".join(f"{k} {v}" for k, v in sorted(others.items())))
    if figures:
        lines.append(f"accuracy on the distilled sets (head -> merged): {claim.describe(figures)}")
    return lines + list(entry["warnings"])


def run_publish(args: argparse.Namespace) -> int:
    for path in args.records:
        if path.is_dir():  # a commit bundle written by `medforge commit`
            result = _call(args, "publish", bundle=str(path.resolve()))
            where = f"forge item v{result['forge_item']}" + (
                " (orphan)" if result["orphan"] else ""
            )
            print(f"published commit {result['commit'][:16]} from {path}: {where}")
            continue
        result = _call(args, "publish_record", file=str(path.resolve()))
        print(f"published {result['kind']} {result['record'][:16]} from {path}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    if args.max_rank is not None and args.max_rank < 1:
        raise UsageError(f"--max-rank must be >= 1, got {args.max_rank}")
    if args.merged:
        _refuse_merged_mixture(Home(Path(args.home)))
    params: dict[str, Any] = {"out": str(args.out.resolve())}
    if args.merged:
        params["merged"] = True
    if args.max_rank is not None:
        params["max_rank"] = args.max_rank
    result = _call(args, "export", **params)
    what = "merged model" if result.get("merged") else "composite"
    card = result.get("card")  # a node of an older build writes none
    emit(
        args,
        result,
        f"forge item v{result['forge_item']} ({result['mode']}, digest "
        f"{result['digest'][:16]}) {what} written to {result['out']}"
        + (f" with its model card {card}" if card else ""),
    )
    return 0


def _refuse_merged_mixture(home: Home) -> None:
    """Before asking the node: a mixture network has no merged model to write."""
    from node.forge.netspec import merge_spec

    if merge_spec(home.genesis()).mode == "mixture":
        raise UsageError(
            "--merged: a mixture has no merged weights (its members' outputs are mixed); "
            "export it without --merged (one PEFT adapter per member)"
        )
