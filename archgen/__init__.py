"""archgen: design small CNNs from explicit rules, price them, search, export."""

from __future__ import annotations

__version__ = "0.1.0"
