"""Time the contributor's pipeline on real offline data with MiniLM (one torch thread).

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/measure_pipeline.py [--quick] [--out DIR]

ICD-10-CM chapters (60 descriptions per chapter): one plugin (r=8 on query/value, 60 steps),
validation accuracy/AUC of base vs plugin, and distillation at ipc 5 and 10 with the base's
accuracy on the distilled set (a sanity check that the summary stays classifiable).
CPU seconds are printed next to wall seconds: on a shared machine they are the better guide
to what a run costs on an idle one (one thread).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from merge.pipeline.backends.text import TextBackend  # noqa: E402
from merge.pipeline.datasets import icd10_chapters  # noqa: E402
from merge.pipeline.distill import DistillConfig, distill  # noqa: E402
from merge.pipeline.evaluate import probs_with_delta  # noqa: E402
from merge.pipeline.metrics import classification_metrics  # noqa: E402
from merge.pipeline.train import TrainConfig, train_plugin  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="medforge-measure-")))
    args = ap.parse_args()
    torch.set_num_threads(1)
    t = time.perf_counter()
    backend = TextBackend.from_pretrained()
    print(f"load MiniLM: {time.perf_counter() - t:.1f} s")
    records = icd10_chapters(per_class=20 if args.quick else 60, seed=0)
    config = TrainConfig.quick() if args.quick else TrainConfig(progress=False)
    cpu = time.process_time()
    r = train_plugin(
        backend, records, task="icd10-chapters", out=args.out / "plugin", config=config
    )
    cpu = time.process_time() - cpu
    print(
        f"train: {config.steps} steps, {r.seconds:.1f} s wall ({cpu:.1f} s CPU), "
        f"{r.seconds_per_step:.3f} s/step; "
        f"val acc {r.base.accuracy:.3f} -> {r.plugin.accuracy:.3f}, "
        f"AUC {r.base.auc:.3f} -> {r.plugin.auc:.3f} (n={r.plugin.n})"
    )
    for ipc in (5,) if args.quick else (5, 10):
        cfg = DistillConfig.quick(ipc=ipc) if args.quick else DistillConfig(ipc=ipc, progress=False)
        cpu = time.process_time()
        rep = distill(backend, records, task="icd10-chapters", config=cfg)
        cpu = time.process_time() - cpu
        d = rep.distilled
        m = classification_metrics(probs_with_delta(backend, d.inputs, d.classes, None), d.labels)
        print(
            f"distill ipc={ipc}: {cfg.steps} steps, {rep.seconds:.1f} s wall ({cpu:.1f} s CPU), "
            f"loss "
            f"{rep.losses[0]:.3f} -> {rep.losses[-1]:.3f}; base acc on distilled {m.accuracy:.3f}"
        )


if __name__ == "__main__":
    main()
