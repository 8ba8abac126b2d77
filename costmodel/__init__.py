"""costmodel: price the layers of a plain CNN (textbook T_c = N_p x N_f x T_k and a calibrated
model), profile real layers on CPU or CUDA, and calibrate the model per device.

This package never imports ``archgen``: it prices sequences of ``LayerGeom`` and any plain
``torch.nn.Module``. Modules, in import order:

* ``geometry``  ``LayerGeom`` (per-sample n_p, n_f, macs, params, acts, bytes) and
  ``geoms_from_module(module, example_input)`` (forward hooks; torch imported lazily);
* ``device_profile``  ``DeviceProfile`` (JSON: fit, fit quality, protocol, context), the
  per-device cache (``load_cached``, ``cache_path``) and the built-in default profile;
* ``estimate``  ``estimate(geoms, profile, batch_size) -> CostReport`` and the fast path
  ``estimate_total_ms`` / ``estimate_layers_ms`` (no torch, no pandas);
* ``profile``  ``time_fn``, ``profile_layer``, ``profile_module(s)`` (CPU and CUDA);
* ``calibrate``  ``calibrate(device, threads, batch_size, quick) -> DeviceProfile``;
* ``report``  text/csv/json/markdown rendering and the per-layer bar chart;
* ``netgen``  random plain-CNN geometries for calibration.
"""

from __future__ import annotations
