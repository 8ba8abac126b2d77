"""GPU check of the trainer: the same spec and seed trained on CPU and on CUDA, images/s and
validation accuracy side by side (run on a machine with a GPU; writes markdown to stdout).

    python scripts/gpu_train_check.py [--data digits] [--epochs 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from archgen.build import build_model
from archgen.data import load_dataset
from archgen.spec import ArchSpec
from archgen.training import TrainConfig, seed_everything, train

SPEC = {"schema_version": 1, "input_shape": [1, 8, 8], "num_classes": 10,
        "layers": [{"op": "conv", "filters": 32, "kernel": 3}, {"op": "batchnorm"}, {"op": "pool"},
                   {"op": "conv", "filters": 64, "kernel": 3}, {"op": "batchnorm"}, {"op": "pool"},
                   {"op": "gap"}, {"op": "dense", "units": 256}]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    data = load_dataset("digits", seed=0)
    spec = ArchSpec.from_dict(SPEC)
    print(f"GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}; torch {torch.__version__}\n")
    print("| device | batch | epochs | s/epoch | images/s | best val acc |")
    print("|---|---:|---:|---:|---:|---:|")
    for device in ("cpu", "cuda"):
        if device == "cuda" and not torch.cuda.is_available():
            continue
        for batch in (64, 256):
            seed_everything(0)
            model = build_model(spec, seed=0)
            cfg = TrainConfig(epochs=args.epochs, patience=args.epochs, batch_size=batch, seed=0,
                              threads=4 if device == "cpu" else None, device=device)
            t0 = time.perf_counter()
            result = train(model, data, cfg)
            dt = (time.perf_counter() - t0) / result.epochs_run
            print(f"| {device} | {batch} | {result.epochs_run} | {dt:.3f} | {len(data.train.y) / dt:,.0f} | {result.best_val_acc:.4f} |")


if __name__ == "__main__":
    main()
