"""costmodel: price the layers of a plain CNN (textbook T_c = N_p x N_f x T_k and a calibrated
model), profile real layers on CPU or CUDA, and calibrate the model per device.

This package never imports ``archgen``: it prices sequences of ``LayerGeom`` and any plain
``torch.nn.Module``.
"""

from __future__ import annotations
