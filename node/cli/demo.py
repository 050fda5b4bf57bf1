"""`medforge demo`: a local network of three hospitals on real offline data.

Each institution gets its own home (identity, genesis, store) and its own real node process
(libp2p on 127.0.0.1, in a line: 1 - 2 - 3). In turn, each trains a LoRA plugin on its own
slice of ICD-10-CM (a different chapter per hospital: the paper's task-incremental setting),
distils a summary set, and commits through its node, which searches the coefficients against
its tip and gossips the commit. Every node merges on its own; the demo watches them converge,
then checks the composite against each single plugin and the base on held-out codes.

Train, distil and commit run the CLI's own code in this process (``node.cli.main``) so the
model loads once; the nodes are separate processes, as in a real deployment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crypto.records import Genesis, Member
from merge.base_shapes import BaseShapes, shapes_of
from merge.lora_config import WEIGHTS_NAME
from node.errors import ControlError, DemoError
from node.forge.netspec import make_spec
from node.shell.control import call
from node.shell.home import Home

# (institution, task, ICD-10-CM chapter): neoplasms, circulatory, respiratory.
INSTITUTIONS = (
    ("st-marys", "neoplasms", "2"),
    ("riverside", "circulatory", "9"),
    ("northgate", "respiratory", "10"),
)


@dataclass
class DemoConfig:
    workdir: Path
    quick: bool = False
    mode: str = "stack"
    seed: int = 0
    fresh: bool = False
    per_class: int | None = None
    converge_timeout: float = 120.0
    independent: bool = False  # the paper's plugins; default: continual on the node's tip

    @property
    def sizes(self) -> dict[str, Any]:
        if self.quick:
            return {
                "per_class": self.per_class or 8,
                "train": ["--steps", "12"],
                "distill": ["--steps", "8", "--ipc", "2"],
            }
        return {
            "per_class": self.per_class or 30,
            "train": ["--steps", "60"],
            "distill": ["--steps", "40", "--ipc", "4"],
        }


@dataclass
class Institution:
    name: str
    task: str
    chapter: str
    home: Home
    classes: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    addr: str = ""

    @property
    def dir(self) -> Path:
        return self.home.path


@dataclass
class Timeline:
    """(seconds since start, node name, forge item, digest) as the nodes reported them."""

    start: float = field(default_factory=time.monotonic)
    points: list[tuple[float, str, int, str | None]] = field(default_factory=list)


def say(message: str) -> None:
    print(message, flush=True)


# -- set-up ---------------------------------------------------------------------------------


def prepare(config: DemoConfig) -> tuple[list[Institution], Any]:
    """Homes, identities, a genesis naming the base model, and each hospital's data slice."""
    from merge.pipeline.backends import load_backend

    if config.fresh and config.workdir.exists():
        shutil.rmtree(config.workdir)
    config.workdir.mkdir(parents=True, exist_ok=True)
    say("loading the base model (MiniLM sentence encoder, shipped in a wheel) ...")
    backend = load_backend("text", None)
    institutions = [
        _institution(config, name, task, chapter) for name, task, chapter in INSTITUTIONS
    ]
    _genesis(config, institutions, backend.fingerprint, shapes_of(backend))
    for inst in institutions:
        _write_data(config, inst)
    return institutions, backend


def _institution(config: DemoConfig, name: str, task: str, chapter: str) -> Institution:
    path = config.workdir / name
    home = Home(path) if (path / "identity.pem").exists() else Home.init(path, name)
    return Institution(name, task, chapter, home)


def _genesis(
    config: DemoConfig, institutions: list[Institution], base: str, shapes: BaseShapes
) -> Genesis:
    first = institutions[0].home
    if first.genesis_path.exists():
        return first.genesis()
    genesis = Genesis(
        name="icd10-demo",
        members=tuple(Member(i.name, i.home.identity().public) for i in institutions),
        threshold=2,
        spec=make_spec(config.mode, base, shapes, backend="text", model=""),
        nonce=os.urandom(8).hex(),
    )
    for inst in institutions:
        inst.home.join(genesis)
    say(
        f"network icd10-demo ({config.mode}): {genesis.network_id.hex()[:16]}…, "
        f"{len(institutions)} founding members, roster threshold 2"
    )
    return genesis


def _write_data(config: DemoConfig, inst: Institution) -> None:
    from merge.pipeline.datasets import icd10_blocks, stratified_split, write_table

    records = icd10_blocks(inst.chapter, per_class=config.sizes["per_class"], seed=config.seed)
    train, test = stratified_split(records, 0.3, config.seed)
    inst.classes = records.classes
    write_table(train, inst.dir / "train.csv")
    write_table(test, inst.dir / "test.csv")


# -- nodes ----------------------------------------------------------------------------------


def start_nodes(institutions: list[Institution]) -> None:
    """Start each node as its own process; each bootstraps to the one before (a line)."""
    previous = ""
    for inst in institutions:
        cfg = inst.home.config()
        cfg.bootstrap = [previous] if previous else []
        inst.home.save_config(cfg)
        inst.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "node.cli",
                "node",
                "run",
                "--home",
                str(inst.dir),
                "--sync-interval",
                "2",
            ],
            stdout=subprocess.PIPE,
            stderr=open(inst.dir / "node.log", "ab"),  # noqa: SIM115
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        inst.addr = _ready(inst)
        previous = inst.addr
        say(f"node {inst.name} up at {inst.addr}")


def _ready(inst: Institution) -> str:
    assert inst.process is not None
    assert inst.process.stdout is not None
    line = inst.process.stdout.readline()
    if not line:
        log = (inst.dir / "node.log").read_text()[-2000:]
        raise DemoError(f"node {inst.name} did not start:\n{log}")
    return str(json.loads(line)["listen"][0])


def stop_nodes(institutions: list[Institution]) -> None:
    for inst in institutions:
        if inst.process is not None and inst.process.poll() is None:
            inst.process.send_signal(signal.SIGTERM)
    for inst in institutions:
        if inst.process is not None:
            try:
                inst.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                inst.process.kill()
                inst.process.wait()


def statuses(institutions: list[Institution]) -> dict[str, dict[str, Any]]:
    out = {}
    for inst in institutions:
        try:
            out[inst.name] = call(inst.home.control_path, "status", timeout=10)
        except ControlError:
            out[inst.name] = {}
    return out


def show_progress(institutions: list[Institution], timeline: Timeline) -> dict[str, dict[str, Any]]:
    now = statuses(institutions)
    for k, inst in enumerate(institutions, 1):
        s = now[inst.name]
        if not s:
            say(f"  node {k} ({inst.name}): not answering")
            continue
        timeline.points.append(
            (time.monotonic() - timeline.start, inst.name, s["forge_item"], s["composite_digest"])
        )
        digest = (s["composite_digest"] or "merging")[:12]
        say(
            f"  node {k} ({inst.name}): forge item v{s['forge_item']}, digest {digest}, "
            f"converged with {s['converged_with']}/{s['peers_connected']} peers"
        )
    return now


def wait_converged(
    institutions: list[Institution], items: int, timeline: Timeline, timeout: float
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        now = show_progress(institutions, timeline)
        digests = {s.get("composite_digest") for s in now.values()}
        done = all(
            s and s["forge_item"] == items and s["converged_with"] == s["peers_connected"]
            for s in now.values()
        )
        if done and len(digests) == 1 and None not in digests:
            return now
        if time.monotonic() > deadline:
            raise DemoError(f"the nodes did not converge on forge item v{items} in {timeout} s")
        time.sleep(1.0)  # watching external processes: nothing to wait on but time


# -- contributors ---------------------------------------------------------------------------


def contribute(config: DemoConfig, inst: Institution) -> None:
    """Train, distil and commit for one institution, with the CLI's own code."""
    from node.cli import main as cli

    adapter, distilled = inst.dir / "plugin", inst.dir / "distilled.safetensors"
    sizes = config.sizes
    classes = list(inst.classes)
    if not (adapter / WEIGHTS_NAME).exists():
        how = (
            "its own data only"
            if config.independent
            else "its own data, on top of the network's composite, replaying its distilled sets"
        )
        say(f"\n[{inst.name}] training a LoRA plugin on {inst.task} ({how})")
        _cli(
            cli,
            [
                "train",
                *(["--independent"] if config.independent else ["--home", str(inst.dir)]),
                "--task",
                inst.task,
                "--data",
                str(inst.dir / "train.csv"),
                "--classes",
                *classes,
                "--out",
                str(adapter),
                "--seed",
                str(config.seed),
                *sizes["train"],
            ],
        )
    if not distilled.exists():
        say(f"[{inst.name}] distilling a synthetic summary set (initialised from noise)")
        _cli(
            cli,
            [
                "distill",
                "--task",
                inst.task,
                "--data",
                str(inst.dir / "train.csv"),
                "--classes",
                *classes,
                "--out",
                str(distilled),
                "--seed",
                str(config.seed),
                *sizes["distill"],
            ],
        )
    if any(e["task"] == inst.task for e in call(inst.home.control_path, "log")):
        say(f"[{inst.name}] already committed {inst.task}; resuming")
        return
    say(f"[{inst.name}] committing: search against its node's tip, sign, publish")
    bundle = inst.dir / f"commit-{int(time.time() * 1000)}"
    _cli(
        cli,
        [
            "commit",
            "--home",
            str(inst.dir),
            "--adapter",
            str(adapter),
            "--distilled",
            str(distilled),
            "--task",
            inst.task,
            "--out",
            str(bundle),
        ],
    )


def _cli(cli: Any, argv: list[str]) -> None:
    code = cli(argv)
    if code != 0:
        raise DemoError(f"`medforge {' '.join(argv[:1])}` failed with exit code {code}")


# -- results --------------------------------------------------------------------------------


def evaluate(config: DemoConfig, institutions: list[Institution], backend: Any) -> dict[str, Any]:
    """Per-task accuracy and AUC of the base, each single plugin, the uniform average and the
    network's composite (folded here from the node's own log: its digest must match)."""
    from merge import fold
    from merge.lora import load_adapter
    from merge.pipeline.datasets import read_table
    from merge.pipeline.evaluate import evaluate_table, mean_over_tasks
    from node.forge.author import Head
    from node.forge.netspec import merge_spec

    home = institutions[0].home
    genesis = home.genesis()
    spec = merge_spec(genesis)
    composer = Head.from_answer(call(home.control_path, "head")).compose(genesis)
    digest = composer.digest
    adapters = {
        i.name: load_adapter(i.dir / "plugin", base=backend.fingerprint, limits=spec.limits)
        for i in institutions
    }
    models: dict[str, Any] = {"zero-shot base": None}
    models.update({f"plugin {i.name} ({i.task})": adapters[i.name] for i in institutions})
    models["uniform average"] = fold.uniform_average(spec.mode, list(adapters.values()))
    models[f"medforge composite ({spec.mode})"] = composer.composite
    tasks = {i.task: read_table(i.dir / "test.csv", i.classes) for i in institutions}
    table = evaluate_table(backend, models, tasks)
    rows = {
        name: {t: m.as_dict() for t, m in row.items()} | {"mean": mean_over_tasks(row).as_dict()}
        for name, row in table.items()
    }
    return {"digest": digest, "rows": rows, "tasks": list(tasks)}


def markdown_table(results: dict[str, Any]) -> str:
    tasks = [*results["tasks"], "mean"]
    lines = [
        "| model | " + " | ".join(f"{t} acc" for t in tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for name, row in results["rows"].items():
        cells = " | ".join(f"{row[t]['accuracy']:.3f}" for t in tasks)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def plot(results: dict[str, Any], timeline: Timeline, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [*results["tasks"], "mean"]
    rows = list(results["rows"].items())
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(14, 5.5))
    width = 0.8 / len(rows)
    for k, (name, row) in enumerate(rows):
        xs = [j + k * width for j in range(len(tasks))]
        bars.bar(xs, [row[t]["accuracy"] for t in tasks], width, label=name)
    bars.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks)
    bars.set_ylabel("accuracy on held-out ICD-10-CM codes")
    bars.set_title("per-task accuracy")
    bars.set_ylim(0, 1.0)
    bars.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3)
    for name in sorted({p[1] for p in timeline.points}):
        pts = [(t, item) for t, n, item, _ in timeline.points if n == name]
        lines.step([t for t, _ in pts], [i for _, i in pts], where="post", label=name)
    lines.set_xlabel("seconds since the nodes started")
    lines.set_ylabel("forge item held")
    lines.set_title("every node's forge item over time")
    lines.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# -- the whole run --------------------------------------------------------------------------


def run_demo(config: DemoConfig) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # measured: small models run several times faster on one thread
    started = time.monotonic()
    institutions, backend = prepare(config)
    timeline = Timeline()
    try:
        start_nodes(institutions)
        for inst in institutions:
            contribute(config, inst)
            # On a resumed run the nodes may already hold more than this commit.
            items = len(call(inst.home.control_path, "log"))
            say(f"\nwaiting for every node to merge forge item v{items} ...")
            wait_converged(institutions, items, timeline, config.converge_timeout)
        final = show_progress(institutions, timeline)
        results = evaluate(config, institutions, backend)
    finally:
        stop_nodes(institutions)
    return _report(config, institutions, final, results, timeline, started)


def _report(
    config: DemoConfig,
    institutions: list[Institution],
    final: dict[str, Any],
    results: dict[str, Any],
    timeline: Timeline,
    started: float,
) -> dict[str, Any]:
    digests = {name: s["composite_digest"] for name, s in final.items()}
    if set(digests.values()) != {results["digest"]}:
        raise DemoError(f"digests differ: nodes {digests}, refolded {results['digest']}")
    png = config.workdir / "demo-results.png"
    plot(results, timeline, png)
    table = markdown_table(results)
    (config.workdir / "demo-results.md").write_text(table + "\n")
    summary = {
        "digests": digests,
        "results": results,
        "plot": str(png),
        "seconds": round(time.monotonic() - started, 1),
        "stores": {i.name: str(i.home.store_path) for i in institutions},
    }
    (config.workdir / "demo-results.json").write_text(json.dumps(summary, indent=2))
    say("\ncomposite digest of every node (identical, folded independently):")
    for inst in institutions:
        say(f"  {inst.name:<10} {digests[inst.name]}   store {inst.home.store_path}")
    say(f"\n{table}\n\nplot: {png}   ({summary['seconds']} s in all)")
    say("\ninspect a node (start it again with `medforge node run --home DIR`):")
    first = institutions[0].dir
    say(f"  medforge status --home {first}\n  medforge log --home {first}")
    return summary
