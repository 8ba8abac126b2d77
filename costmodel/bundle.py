"""Calibration bundles: calibrate the device a network will run on without installing archgen
there.

``write_bundle(folder, ...)`` writes a self-contained folder::

    bundle.json    the calibration networks' layer geometries, the runtime, threads, batch
                   size, repeats and protocol (``costmodel.runner`` reads it)
    models/*.onnx  the networks exported to ONNX (onnxruntime bundles only; a torch bundle's
                   runner builds its networks from the geometries)
    run.py         ``costmodel.runner`` itself, with ``speed.py``, ``timing.py`` and
                   ``timing_ort.py`` (the timing code of a local calibration): needs Python,
                   numpy and onnxruntime (or only torch for a torch bundle)
    README.txt     what to do with it

On the target: ``python run.py --out measurements.json``; back here:
``archgen calibrate --measurements measurements.json`` fits the target's device profile
(``costmodel.calibration.fit_measurements``). The networks are the same ones a local
calibration measures, with the same protocol: the local calibration runs the same timing code.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import costmodel.runner as runner
from costmodel.activations import ACTIVATIONS
from costmodel.atomic import fsync_path
from costmodel.device_profile import RUNTIMES
from costmodel.errors import CostModelError
from costmodel.geometry import LayerGeom
from costmodel.measurements import geom_to_dict

README = """archgen calibration bundle ({runtime}, {threads} thread(s), batch {batch})

Copy this folder to the device the network will run on and, there, in this folder:

    python run.py --out measurements.json

It needs Python 3.9+ and {needs}. It measures {n} networks ({minutes}) and
writes measurements.json (an existing one is kept unless you add --force). Keep the device
otherwise idle while it runs. Bring the file back and fit the device's profile:

    archgen calibrate --measurements measurements.json --out target-profile.json

then price for that device: archgen search --device-profile target-profile.json, archgen cost
SPEC --device-profile target-profile.json, archgen generate ... --device-profile ...
"""


def write_bundle(folder: str | os.PathLike[str], networks: Sequence[Sequence[LayerGeom]],
                 micro: Sequence[LayerGeom], runtime: str = "onnxruntime", threads: int = 1,
                 batch_size: int = 1, repeats: int = 9, protocol: dict[str, object] | None = None,
                 progress: Callable[[str], None] | None = None) -> Path:
    """Write the bundle to ``folder`` (which must not exist yet; written whole or not at all)."""
    from costmodel.measure import ANCHOR_GEOMS, REFERENCE_GEOMS

    if runtime not in RUNTIMES:
        raise CostModelError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    folder = Path(folder)
    if folder.exists():
        raise CostModelError(f"{folder} exists; a bundle goes into a new folder")
    say = progress or (lambda msg: None)
    doc = {
        "format": runner.BUNDLE_FORMAT, "version": runner.VERSION, "runtime": runtime,
        "threads": threads, "batch_size": batch_size, "repeats": repeats,
        "protocol": dict(protocol or {}, runtime=runtime),
        "activations": {k: list(v) for k, v in ACTIVATIONS.items()},
        "micro": [geom_to_dict(g) for g in micro],
        "networks": [[geom_to_dict(g) for g in n] for n in networks],
        "reference": [geom_to_dict(g) for g in REFERENCE_GEOMS],
        "anchors": [[geom_to_dict(g) for g in n] for n in ANCHOR_GEOMS],
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:12]}.tmp"
    tmp.mkdir()  # with the umask's mode, as any folder (mkdtemp's would be the owner's alone)
    try:
        if runtime == "onnxruntime":
            _export_models(tmp / "models", micro, networks, batch_size, say)
        (tmp / "bundle.json").write_text(json.dumps(doc))
        shutil.copyfile(runner.__file__, tmp / "run.py")
        for name in runner.FILES:
            shutil.copyfile(Path(runner.__file__).with_name(name), tmp / name)
        needs = "numpy and onnxruntime (pip install numpy onnxruntime)" if runtime == "onnxruntime" \
            else "torch (pip install torch)"
        minutes = "a minute or two" if len(networks) <= 40 else "a few minutes"
        (tmp / "README.txt").write_text(README.format(runtime=runtime, threads=threads, batch=batch_size,
                                                      needs=needs, n=len(networks), minutes=minutes))
        for path in [*tmp.rglob("*"), tmp]:  # on disk before the folder takes its name
            fsync_path(path)
        os.replace(tmp, folder)
        fsync_path(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _export_models(models: Path, micro: Sequence[LayerGeom], networks: Sequence[Sequence[LayerGeom]],
                   batch_size: int, say: Callable[[str], None]) -> None:
    import torch

    from costmodel.measure import ANCHOR_GEOMS, REFERENCE_GEOMS
    from costmodel.ort import export_geoms, write_probes

    models.mkdir()
    write_probes(models)
    torch.manual_seed(0)
    groups = {"micro": [[g] for g in micro], "networks": list(networks), "reference": [list(REFERENCE_GEOMS)],
              "anchors": [list(n) for n in ANCHOR_GEOMS]}
    for key, nets in groups.items():
        for i, geoms in enumerate(nets):
            export_geoms(geoms, batch_size, models / f"{key}{i}.onnx")
    say(f"exported {sum(len(n) for n in groups.values()) + 2} ONNX models")
