#!/usr/bin/env python
"""Training throughput, in images/s, of three pipelines timed in one process and one run.

    bare          forward, backward and SGD step on one fixed batch already on the device
    resbench      resbench's own training loop (train.train): device-resident data, batched
                  augmentation, logging and TensorBoard included; evaluation and checkpoints excluded
    conventional  torchvision CIFAR10 + PIL RandomCrop/RandomHorizontalFlip/ToTensor/Normalize,
                  a DataLoader with 2 workers, an NCHW fp32 model

`bare` uses the same precision and memory format as `resbench`, so `resbench/bare` is the cost of
the input pipeline and bookkeeping. Ratios matter more than absolute numbers on a shared machine.
`ops/step` counts the aten ops one steady-state `bare` step dispatches (resbench.dispatch), and
`optim` the optimiser's share of them: on a GPU each op launches at least one kernel, so it bounds
how fast an eager step can be.

On CUDA a second table times resbench's loop four ways (issue 11): `eager`, `compile`
(run.compile: torch.compile, max-autotune-no-cudagraphs), `cuda_graph` (run.cuda_graph: each step
replays one captured CUDA graph) and `cuda_graph+compile`, in ms/step, images/s and speed-up over
`eager`. Compile time and capture fall in the untimed first window.

Fair timing: every variant runs after the same warm-up, with cuDNN's autotuner set once per device
before the first model; each timed window ends with one read of the device (`torch.cuda.synchronize`
for bare and conventional, the loop's one log-point read for resbench: one window of `--steps`
steps, so no other read falls inside it); and the DataLoader's workers are shut down before the next
measurement, so they do not compete with it for the CPU.

    python scripts/bench_train.py                          # ResNet-20 and -56, CPU (+ CUDA if present)
    python scripts/bench_train.py --devices cuda           # on a GPU: the table and the four variants
    python scripts/bench_train.py --models resnet56 --steps 60 --data-root data
    python scripts/bench_train.py --repeats 3              # medians of 3 interleaved rounds
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import tempfile
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from resbench import config
from resbench.dispatch import OpCounter
from resbench.hardware import autocast, resolve_precision, set_kernels
from resbench.models import build_model
from resbench.step import train_step
from resbench.tracking import cpu_name
from resbench.train import build_optimizer, train


def synthetic_pickles(root: Path, n_train: int = 50_000, n_test: int = 10_000) -> Path:
    """Random images in torchvision's pickle layout: speed does not depend on what the pixels show."""
    out = root / "cifar-10-batches-py"
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per_batch = n_train // 5
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", n_test)]:
        batch = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, n).tolist(),
        }
        (out / name).write_bytes(pickle.dumps(batch, protocol=2))
    (out / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}, protocol=2))
    return root


def bare(
    cfg: config.RunConfig, device: torch.device, precision: str, steps: int, warmup: int
) -> tuple[float, OpCounter]:
    """Images/s, and the ops of one more step, counted after the timed window (counting is slow)."""
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device, memory_format=torch.channels_last).train()
    optimizer = build_optimizer(model, cfg.optim, device)
    images = torch.randn(cfg.optim.batch_size, 3, 32, 32, device=device).contiguous(
        memory_format=torch.channels_last
    )
    labels = torch.randint(0, 10, (cfg.optim.batch_size,), device=device)
    amp = autocast(device, precision)
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        train_step(model, optimizer, images, labels, amp)
    _sync(device)
    rate = steps * cfg.optim.batch_size / (time.perf_counter() - t0)
    with OpCounter() as ops:
        train_step(model, optimizer, images, labels, amp)
    return rate, ops


def resbench_loop(cfg: config.RunConfig, steps: int, scratch: Path, **run: bool) -> float:
    """The real `train()` over two log windows of `steps` steps: the first warms up (and compiles
    and captures, where asked), the second is timed. Read back from metrics.jsonl. `run` sets
    run.compile or run.cuda_graph."""
    cfg = config.validate(
        {
            **cfg.to_dict(),
            "schedule": {"iterations": 2 * steps, "milestones": []},
            "run": {
                **cfg.to_dict()["run"],
                **run,
                "log_every": steps,
                "eval_every": 2 * steps,
                "checkpoint_every": 0,
            },
        }
    )
    run_dir = scratch / f"{cfg.run.name}-{cfg.run.device}"
    train(cfg, run_dir, force=True)
    windows = [
        m
        for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "perf/images_per_sec" in m
    ]
    assert [m["iteration"] for m in windows] == [steps, 2 * steps]
    return windows[1]["perf/images_per_sec"]


def conventional(cfg: config.RunConfig, device: torch.device, root: Path, steps: int, warmup: int) -> float:
    import torchvision
    import torchvision.transforms as T

    class LocalCIFAR10(torchvision.datasets.CIFAR10):  # accept copies whose md5 differs
        train_list: ClassVar = [[f"data_batch_{i}", None] for i in range(1, 6)]
        test_list: ClassVar = [["test_batch", None]]
        meta: ClassVar = {"filename": "batches.meta", "key": "label_names", "md5": None}

    transform = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
        ]
    )
    dataset = LocalCIFAR10(str(root), train=True, transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.optim.batch_size,
        shuffle=True,
        num_workers=2,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device).train()
    optimizer = build_optimizer(model, cfg.optim, device)
    it = iter(loader)
    try:
        for i in range(warmup + steps):
            if i == warmup:
                _sync(device)
                t0 = time.perf_counter()
            images, labels = next(it)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _sync(device)
        return steps * cfg.optim.batch_size / (time.perf_counter() - t0)
    finally:
        it._shutdown_workers()  # now, not at garbage collection: they would compete with what follows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


VARIANTS = {
    "eager": {},
    "compile": {"compile": True},
    "cuda_graph": {"cuda_graph": True},
    "cuda_graph+compile": {"cuda_graph": True, "compile": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="resnet20,resnet56")
    parser.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (resbench: --steps)")
    parser.add_argument("--data-root", type=Path, help="a folder with cifar-10-batches-py/ (default: random)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every measurement; medians shown")
    args = parser.parse_args()

    print(
        f"# {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
    )
    print(
        f"{'model':10} {'device':6} {'precision':9} {'bare':>8} {'resbench':>9} {'conventional':>13} "
        f"{'resbench/bare':>14} {'resbench/conv':>14} {'ops/step':>9} {'optim':>6}"
    )
    variants: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        root = args.data_root or synthetic_pickles(scratch / "data")
        for device_name in args.devices.split(","):
            device = torch.device(device_name)
            precision = resolve_precision("auto", device)
            set_kernels(device, deterministic=False)  # train() sets the same: every variant gets them
            for name in args.models.split(","):
                cfg = config.load(name, [f"data.root={root}", f"run.device={device_name}"])
                rounds = []  # interleaved, so that a slow spell of a shared machine hits every pipeline
                for _ in range(args.repeats):
                    r_bare, ops = bare(cfg, device, precision, args.steps, args.warmup)
                    r_res = resbench_loop(cfg, args.steps, scratch)
                    r_conv = conventional(cfg, device, root, args.steps, args.warmup)
                    rounds.append((r_bare, r_res, r_conv))
                r_bare, r_res, r_conv = (statistics.median(r) for r in zip(*rounds, strict=True))
                vs_bare = statistics.median(res / b for b, res, _ in rounds)  # each round's own ratio
                vs_conv = statistics.median(res / c for _, res, c in rounds)
                print(
                    f"{name:10} {device_name:6} {precision:9} {r_bare:8.0f} {r_res:9.0f} {r_conv:13.0f} "
                    f"{vs_bare:14.2f} {vs_conv:14.2f} {len(ops.ops):9} {ops.optimizer_ops:6}",
                    flush=True,
                )
                if device.type == "cuda":
                    rounds = [  # interleaved too, the medians shown
                        {v: resbench_loop(cfg, args.steps, scratch, **run) for v, run in VARIANTS.items()}
                        for _ in range(args.repeats)
                    ]
                    rates = {v: statistics.median(r[v] for r in rounds) for v in VARIANTS}
                    ms = {v: 1000 * cfg.optim.batch_size / r for v, r in rates.items()}
                    variants += [
                        f"{name:10} {precision:9} {v:19} {ms[v]:8.2f} {r:9.0f} {r / rates['eager']:9.2f}"
                        for v, r in rates.items()
                    ]
    if variants:
        print(f"\n{'model':10} {'precision':9} {'cuda variant':19} ", end="")
        print(f"{'ms/step':>8} {'images/s':>9} {'vs eager':>9}")
        print("\n".join(variants))


if __name__ == "__main__":
    main()
