"""R7: which weight-init scheme should be the default? Validation accuracy of the same
networks trained with each scheme (textbook 1/n_in^2, 1/sqrt(n_in), Glorot, Kaiming).

    python scripts/bench_init.py [--data digits] [--seeds 3] [--epochs 8]

Prints a markdown table: median validation accuracy over seeds per scheme and network.
Validation data only: the test split stays sealed.
"""

from __future__ import annotations

import argparse
import statistics

from archgen.build import build_model
from archgen.data import load_dataset
from archgen.spec import INIT_SCHEMES, ArchSpec
from archgen.training import TrainConfig, seed_everything, train

NETS = {
    "shallow": [{"op": "conv", "filters": 16, "kernel": 3}, {"op": "pool"}, {"op": "dense", "units": 128}],
    "deep": [{"op": "conv", "filters": 16, "kernel": 3}, {"op": "conv", "filters": 16, "kernel": 3}, {"op": "pool"},
             {"op": "conv", "filters": 32, "kernel": 3}, {"op": "conv", "filters": 32, "kernel": 3}, {"op": "pool"},
             {"op": "conv", "filters": 64, "kernel": 3}, {"op": "gap"}, {"op": "dense", "units": 128}],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="digits")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()
    data = load_dataset(args.data, seed=0)
    print(f"| network | {' | '.join(INIT_SCHEMES)} |")
    print("|---|" + "---:|" * len(INIT_SCHEMES))
    for name, layers in NETS.items():
        cells = []
        for scheme in INIT_SCHEMES:
            accs = []
            for seed in range(args.seeds):
                spec = ArchSpec.from_dict({"schema_version": 1, "input_shape": list(data.input_shape),
                                           "num_classes": data.num_classes, "layers": layers,
                                           "init": {"scheme": scheme}})
                seed_everything(seed)
                model = build_model(spec, seed=seed)
                result = train(model, data, TrainConfig(lr=1e-3, epochs=args.epochs, patience=args.epochs,
                                                        seed=seed, threads=1))
                accs.append(result.best_val_acc)
            cells.append(f"{statistics.median(accs):.4f}")
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
