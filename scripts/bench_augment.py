"""Does random-shift augmentation help? The search space's default network trained with and
without it; decided on validation accuracy only (the test split stays sealed).

    taskset -c 0 python scripts/bench_augment.py idx:../shared/data/mnist10k 0 2
    taskset -c 0 python scripts/bench_augment.py digits 0 1
"""

from __future__ import annotations

import sys
import time

from archgen.build import build_model
from archgen.data import load_dataset
from archgen.space import default_space, spec_from_params
from archgen.training import TrainConfig, seed_everything, train


def main() -> None:
    source, shifts = sys.argv[1], [int(s) for s in sys.argv[2:]] or [0, 2]
    data = load_dataset(source, seed=0)
    space = default_space(data.input_shape)
    params = {name: p.default_value() for name, p in space.items()}
    spec = spec_from_params(params, data.input_shape, data.num_classes)
    for shift in shifts:
        seed_everything(0)
        model = build_model(spec, seed=0)
        t0 = time.time()
        result = train(model, data, TrainConfig(epochs=20, patience=5, threads=1, augment_shift=shift,
                                                weight_decay=1e-5, seed=0))
        print(f"{source} {spec.short_name()} shift {shift}: val_acc {result.best_val_acc:.4f} "
              f"(best epoch {result.best_epoch} of {result.epochs_run}, {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
