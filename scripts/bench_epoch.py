"""Where a trial's epoch goes, and what makes it faster (issue 13, item 4).

For the search's default configuration on a dataset (and ``--networks`` seeded random draws of
the default space), trains with archgen's ``Trainer`` and times, side by side in one process:

* ``contiguous``: one epoch in PyTorch's default memory layout (training batches, then the
  validation pass; the reference of the ratios);
* ``channels-last``: the model and the images in channels-last layout (the trainer's
  ``memory_format="auto"`` on the CPU);
* ``inference-mode``: ``contiguous`` with the validation pass under ``torch.inference_mode``
  instead of ``no_grad``;
* ``compile``: ``contiguous`` with ``torch.compile(model)`` (default mode): its compile time
  (first epoch) and its later epochs.

Variants run alternately, epoch by epoch, from copies of one initialization; each figure is the
median over ``--epochs`` timed epochs after one warm-up epoch. Run it pinned to one core and
say what ran on the other::

    taskset -c 0 python scripts/bench_epoch.py --data digits --networks 2
    taskset -c 0 python scripts/bench_epoch.py --data idx:../shared/data/mnist10k --networks 2
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from archgen.build import build_model
from archgen.data import load_dataset
from archgen.space import default_space, spec_from_params, train_kwargs
from archgen.training import TrainConfig, Trainer, seed_everything


def configurations(shape: tuple[int, int, int], n_random: int, seed: int) -> list[dict]:
    """The default space's own configuration, then ``n_random`` seeded random draws."""
    space = default_space(shape)
    out = [{name: p.default_value() for name, p in space.items()}]
    rng = random.Random(seed)
    while len(out) < 1 + n_random:
        params = {}
        for name, p in space.items():
            if p.kind == "choice":
                params[name] = rng.choice(p.choices)
            elif p.log:
                params[name] = math.exp(rng.uniform(math.log(p.low), math.log(p.high)))
            else:
                params[name] = rng.uniform(p.low, p.high)
            if p.kind == "int":
                params[name] = int(round(params[name]))
        out.append(params)
    return out


class Variant:
    """One way to run the same network's epochs."""

    def __init__(self, name: str, model: torch.nn.Module, data, cfg: TrainConfig) -> None:
        self.name = name
        layout = "channels_last" if name == "channels-last" else "contiguous"
        self.trainer = Trainer(model, data, dataclasses.replace(cfg, memory_format=layout))
        if name == "compile":
            self.trainer.model = torch.compile(self.trainer.model)
        self.train_s: list[float] = []
        self.val_s: list[float] = []
        self.first_s = 0.0

    def epoch(self) -> None:
        tr = self.trainer
        evaluate = tr.evaluate
        spent = {}

        def timed_eval(split):
            t = time.perf_counter()
            if self.name == "inference-mode":
                with torch.inference_mode():
                    out = evaluate(split)
            else:
                out = evaluate(split)
            spent["val"] = time.perf_counter() - t
            return out

        tr.evaluate = timed_eval
        t0 = time.perf_counter()
        tr.run_epochs(1)
        total = time.perf_counter() - t0
        tr.evaluate = evaluate
        if not self.first_s:
            self.first_s = total
            return
        self.val_s.append(spent["val"])
        self.train_s.append(total - spent["val"])


def bench_network(params: dict, data, shape, classes: int, epochs: int, variants: list[str]) -> dict:
    spec = spec_from_params(params, shape, classes)
    kw = train_kwargs(params)
    seed_everything(0)
    model = build_model(spec, seed=0)
    cfg = TrainConfig(epochs=epochs + 1, threads=1, seed=0, **{k: v for k, v in kw.items()
                                                             if k in TrainConfig.__dataclass_fields__})
    runs = [Variant(v, copy.deepcopy(model), data, cfg) for v in variants]
    for _ in range(epochs + 1):
        for r in runs:
            r.epoch()
    base = runs[0]  # the first variant is the reference
    base_epoch = statistics.median(a + b for a, b in zip(base.train_s, base.val_s))
    row = {"spec": spec.key()[:60], "params": params,
           "batch_size": cfg.batch_size, "train_n": len(data.train.y), "val_n": len(data.val.y),
           "base_epoch_s": base_epoch,
           "val_share": statistics.median(v / (t + v) for t, v in zip(base.train_s, base.val_s))}
    for r in runs:
        ep = statistics.median(a + b for a, b in zip(r.train_s, r.val_s))
        row[r.name] = {"epoch_s": ep, "train_s": statistics.median(r.train_s),
                       "val_s": statistics.median(r.val_s), "first_epoch_s": r.first_s,
                       "vs_base": ep / base_epoch}
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--networks", type=int, default=2, help="random draws besides the default configuration")
    ap.add_argument("--epochs", type=int, default=5, help="timed epochs per variant (after one warm-up)")
    ap.add_argument("--variants", default="contiguous,channels-last,inference-mode,compile")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = load_dataset(args.data, seed=args.seed)
    shape = tuple(data.train.x.shape[1:])
    classes = data.num_classes
    variants = args.variants.split(",")
    rows = []
    for params in configurations(shape, args.networks, args.seed):
        try:
            row = bench_network(params, data, shape, classes, args.epochs, variants)
        except Exception as exc:  # a draw the generator cannot build: say so, go on
            print(f"skipped a draw: {exc}", file=sys.stderr)
            continue
        rows.append(row)
        cells = " | ".join(f"{v} {row[v]['epoch_s'] * 1e3:.0f} ms ({row[v]['vs_base']:.2f}x, first "
                           f"{row[v]['first_epoch_s']:.1f} s)" for v in variants)
        print(f"{row['spec']} b{row['batch_size']}: validation {100 * row['val_share']:.0f}% of an epoch | {cells}",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"data": args.data, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
