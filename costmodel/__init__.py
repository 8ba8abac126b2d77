"""costmodel: price the layers of a plain CNN (textbook T_c = N_p x N_f x T_k and a calibrated
model), profile real layers on CPU or CUDA, and calibrate the model per device.

This package never imports ``archgen``: it prices sequences of ``LayerGeom`` and any plain
``torch.nn.Module``. Public API (loaded on first use, so ``import costmodel`` imports no torch):
``estimate``, ``calibrate``, ``profile_module``, ``profile_modules``, ``DeviceProfile``,
``LayerGeom``, ``CostReport``, ``geoms_from_module``, ``load_cached``, ``default_profile``.

Modules, in import order:

* ``errors``  ``CostModelError``; ``atomic``  atomic file writes;
* ``activations``  the one table of activation functions (names, torch classes, calibrated ones);
* ``geometry``  ``LayerGeom`` (per-sample n_p, n_f, macs, params, acts, bytes) and
  ``geoms_from_module(module, example_input)`` (forward hooks, one handler per leaf module
  type; torch imported lazily);
* ``device_profile``  ``DeviceProfile`` (plain data; JSON: fit, fit quality, protocol, context),
  the per-device cache (``load_cached``, ``cache_path``) and the built-in default profile;
* ``modeldef``  the model's definition shared by estimator and fitter: op classes, linear base,
  residual and tree features, clamps, the network correction, the textbook seed form;
* ``estimator``  ``estimate(geoms, profile, batch_size) -> CostReport``, the fast path
  ``estimate_total_ms`` / ``estimate_layers_ms`` and profile compilation (no torch, no pandas);
* ``profile``  timing protocol, ``time_fn``, ``profile_module(s)`` (CPU and CUDA);
* ``netgen``  random plain-CNN geometries for calibration;
* ``measure``  modules built from geometries, ``profile_layer``, calibration's measurements;
* ``layer_context``  how a layer's time follows its network's time and the layer before it: the
  definition, the fixed point the estimator solves, and its fit;
* ``netfit``  the network-level correction (linear or log form, chosen by cross-validation) and
  the relative least squares the fits share;
* ``trees``  the boosted regression trees per op and their export;
* ``fit``  fitting a profile to measurements (NNLS, ridge, boosted trees; the network correction
  from ``netfit``; the layer context, kept when it prices the calibration networks better out
  of fold);
* ``calibration``  ``calibrate(device, threads, batch_size, quick) -> DeviceProfile``;
* ``report``  text/csv/json/markdown rendering and the per-layer bar chart.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from costmodel.calibration import calibrate
    from costmodel.device_profile import DeviceProfile, default_profile, load_cached
    from costmodel.estimator import CostReport, estimate
    from costmodel.geometry import LayerGeom, geoms_from_module
    from costmodel.profile import profile_module, profile_modules

# Public name -> the module defining it.
_EXPORTS = {
    "estimate": "costmodel.estimator",
    "CostReport": "costmodel.estimator",
    "calibrate": "costmodel.calibration",
    "profile_module": "costmodel.profile",
    "profile_modules": "costmodel.profile",
    "DeviceProfile": "costmodel.device_profile",
    "load_cached": "costmodel.device_profile",
    "default_profile": "costmodel.device_profile",
    "LayerGeom": "costmodel.geometry",
    "geoms_from_module": "costmodel.geometry",
}

__all__ = [
    "CostReport",
    "DeviceProfile",
    "LayerGeom",
    "calibrate",
    "default_profile",
    "estimate",
    "geoms_from_module",
    "load_cached",
    "profile_module",
    "profile_modules",
]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
