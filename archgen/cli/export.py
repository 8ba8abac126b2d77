"""``archgen export``: write a spec as JSON/YAML, or a network as ONNX verified by onnxruntime."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a spec or run as JSON, YAML or ONNX")
    p.add_argument("source", metavar="RUN_DIR|SPEC")
    p.add_argument("--format", choices=("json", "yaml", "onnx"), required=True)
    p.add_argument("--out", default=None, metavar="PATH", help="output file (default: stdout for json/yaml)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from archgen.costing import check_fits_in_memory
    from archgen.export import resolve_source
    from archgen.rundir import check_out_file
    from archgen.spec import save_spec

    source = resolve_source(args.source)
    if args.format in ("json", "yaml"):
        if args.out is None:
            text = source.spec.to_json() + "\n" if args.format == "json" else source.spec.to_yaml()
            sys.stdout.write(text)
            return 0
        out = Path(args.out)
        if out.suffix.lower() not in {".json", ".yaml", ".yml"}:
            out = out.with_suffix(".json" if args.format == "json" else ".yaml")
        check_out_file(out, force=args.force)
        save_spec(source.spec, out)
        print(out)
        return 0
    from archgen.export import export_onnx, load_model

    out = Path(args.out or (Path(args.source).stem if not Path(args.source).is_dir() else "model") + ".onnx")
    check_out_file(out, force=args.force)
    check_fits_in_memory(source.spec, 5)
    model = load_model(source)
    diff = export_onnx(model, source.spec, out)
    weights = "trained weights" if source.weights else "freshly initialized weights (no weights.pt found)"
    print(f"{out}  ({weights}; onnxruntime matches PyTorch logits within {diff:.1e})")
    return 0
