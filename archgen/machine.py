"""What this machine lends a search: usable CPU cores (affinity and cgroup limits), available
memory, visible GPUs, and from them the number of search workers ``--workers auto`` runs.

Rules (docs/design.md, "Workers"):

* CPU: one single-threaded worker per usable core (small CNNs barely scale past one intra-op
  thread, docs/benchmarks.md), capped so that the workers' baseline memory (a torch process and
  its copy of the data) fits in half of the available memory, and by ``--trials``.
* CUDA: ``GPU_WORKERS_PER_DEVICE`` workers share each GPU (small networks are launch-bound: one
  Python process leaves the GPU mostly idle), at most one per usable core; ``cuda:all`` spreads
  them over every visible GPU, worker ``i`` on GPU ``i mod n``.
* PBT trains its population in one process: one worker.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# A worker process's baseline memory: the Python interpreter with torch, optuna and the model
# code imported, before its copy of the data (measured: ~330 MB RSS on torch 2.13 CPU).
WORKER_BASE_MB = 400.0
# Workers that share one GPU under --workers auto: a guess not yet measured on a GPU
# (scripts/gpu_workers_check.sh measures it; docs/design.md, "Workers").
GPU_WORKERS_PER_DEVICE = 4
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in cores (cgroup v2 ``cpu.max``, else v1
    ``cpu.cfs_quota_us / cpu.cfs_period_us``); None when unlimited or unreadable."""
    try:
        text = (root / "cpu.max").read_text().split()
        if len(text) == 2 and text[0] != "max":
            return int(text[0]) / int(text[1])
        if text:
            return None
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def affinity_cpus() -> int:
    """CPUs this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where the
    platform has no affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """Whole cores this process can use: its CPU affinity, capped by a cgroup CPU quota (a
    container given 2.5 CPUs gets 2 workers)."""
    n = affinity_cpus()
    quota = cgroup_cpu_limit(root)
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    return max(1, n)


def available_memory_mb() -> float | None:
    """``MemAvailable`` of /proc/meminfo in MB; None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cuda_devices() -> int:
    """Visible CUDA devices (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def auto_workers(*, device: str, strategy: str, trials: int | None, data_mb: float,
                 cpus: int | None = None, memory_mb: float | None = None, gpus: int | None = None) -> int:
    """The worker count of ``--workers auto`` (the rules in this module's docstring).
    ``cpus``, ``memory_mb`` and ``gpus`` default to this machine's."""
    if strategy == "pbt":
        return 1
    cpus = usable_cpus() if cpus is None else cpus
    n = cpus
    if device.startswith("cuda"):
        if gpus is None:
            gpus = cuda_devices() if device == "cuda:all" else 1
        n = min(cpus, GPU_WORKERS_PER_DEVICE * max(1, gpus))
    memory_mb = available_memory_mb() if memory_mb is None else memory_mb
    if memory_mb is not None:
        n = min(n, max(1, int(memory_mb / 2 // (WORKER_BASE_MB + 2 * data_mb))))
    if trials is not None:
        n = min(n, trials)
    return max(1, n)


@contextlib.contextmanager
def main_module_hidden() -> Iterator[None]:
    """Start a worker without the caller's ``__main__``: a worker runs archgen code only, and the
    spawn start method would otherwise import the caller's script again in the worker, so that a
    script calling ``archgen.search()`` without an ``if __name__ == "__main__":`` guard would
    start its search again in every worker (multiprocessing refuses with a RuntimeError)."""
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__spec__", "__file__") if main is not None and hasattr(main, k)}
    try:
        if "__spec__" in saved:
            main.__spec__ = None  # type: ignore[union-attr]
        if "__file__" in saved:
            del main.__file__  # type: ignore[union-attr]
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)
