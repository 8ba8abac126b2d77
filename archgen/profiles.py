"""Which device profile prices a network: one rule for ``archgen cost``, ``profile``,
``generate``, ``search`` and the Python API.

1. ``--device-profile FILE``: that profile, whatever device it was made on. A profile of
   another device, runtime or software version is *foreign*: it prices networks for the device
   it was made on (its estimates are that device's), and the note says so.
2. Else the cached profile of this machine for (device, runtime, threads, batch size). Without
   a batch size: the cached one for the smallest batch size there is (the search calibrates at
   its latency batch, 1 by default), so ``archgen cost SPEC`` finds the profile a search made.
3. Else the built-in uncalibrated profile; the note says which cached profiles exist instead.

Every choice comes with a one-line ``note`` naming the profile used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from archgen.errors import UserError

if TYPE_CHECKING:
    from archgen.settings import SearchSettings
    from costmodel.device_profile import DeviceProfile


@dataclass(frozen=True)
class ProfileChoice:
    """The profile to price with, where it came from, and one line saying so."""

    profile: DeviceProfile
    source: str  # "file", "cache" or "built-in"
    path: Path | None
    foreign: bool
    note: str

    @property
    def is_default(self) -> bool:
        return self.source == "built-in"


def load_profile_file(path: str | Path) -> DeviceProfile:
    """A profile file, or UserError in one line."""
    from costmodel.device_profile import DeviceProfile
    from costmodel.errors import CostModelError

    try:
        return DeviceProfile.load(path)
    except FileNotFoundError:
        raise UserError(f"--device-profile {path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"--device-profile {path}: is a directory, not a profile file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--device-profile {path}: cannot read it ({exc})") from None
    except CostModelError as exc:
        raise UserError(f"--device-profile {path}: {exc}") from None
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"--device-profile {path}: not a device profile ({type(exc).__name__}: {exc})") from None


def cached_batch_sizes(device: str = "cpu", runtime: str = "torch", threads: int = 1) -> list[int]:
    """Batch sizes this machine has cached profiles for (device, runtime, threads)."""
    from costmodel.device_profile import cache_path, current_context

    folder = cache_path(current_context(device, threads, 1, runtime=runtime)).parent
    prefix = "profile" if runtime == "torch" else f"profile-{runtime}"
    pattern = re.compile(rf"{re.escape(prefix)}-t{threads}-b(\d+)\.json")
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := pattern.fullmatch(p.name)))


def measured_kind(profile: DeviceProfile, device: str) -> str:
    """The kind of device (``cpu``, ``cuda``) a network priced by ``profile`` is measured on when
    ``device`` (``cpu``, ``cuda``, ``cuda:N``) is asked for: ONNX Runtime measures on the CPU."""
    return "cpu" if profile.runtime == "onnxruntime" else device.split(":")[0]


def measures_another_kind(profile: DeviceProfile, device: str) -> bool:
    """Whether measuring on ``device`` measures another kind of device than ``profile`` prices
    (this machine's CUDA profile, measured on its CPU); the built-in profile prices no device."""
    return not profile.is_default and str(profile.context.get("device")) != measured_kind(profile, device)


def choose_profile(path: str | Path | None = None, *, device: str = "cpu", runtime: str = "torch",
                   threads: int = 1, batch_size: int | None = None, measure_on: str | None = None) -> ProfileChoice:
    """The profile to price with (module docstring); ``device`` as ``--device`` names it
    (``cuda:1`` looks up the profile of GPU 1's model). ``measure_on``: the device the command
    measures the network on, if it measures (``profile``, a search's finalize); a profile file of
    another device kind (this machine's CUDA profile for a measurement on the CPU; ONNX Runtime
    measures on the CPU) is foreign there too: what is measured is not what it prices."""
    from costmodel.device_profile import (
        cache_path,
        default_profile,
        load_cached,
        predates_steady_allocator,
    )
    from costmodel.errors import CostModelError

    if path:
        profile = load_profile_file(path)
        foreign = profile.is_foreign()
        where = "another machine's profile" if foreign else "device profile"
        note = f"{where} {path}: {profile.describe()}"
        if foreign:
            note += " (its estimates are for that device, not this machine)"
        elif measure_on is not None and measures_another_kind(profile, measure_on):
            note += (f" (its estimates are for this machine's {profile.context.get('device')}, not the "
                     f"{measured_kind(profile, measure_on)} measured here)")
            foreign = True
        return ProfileChoice(profile, "file", Path(path), foreign, note)
    try:
        sizes = cached_batch_sizes(device, runtime, threads)
        wanted = batch_size if batch_size is not None else (sizes[0] if sizes else None)
        profile = load_cached(device, threads, wanted, runtime) if wanted is not None else None
    except CostModelError as exc:
        raise UserError(str(exc)) from None
    if profile is not None:
        where = cache_path(profile.context)
        note = f"cached {profile.describe()} ({where})"
        if predates_steady_allocator(profile):
            threads = int(profile.context.get("threads") or 1)
            note += ("; measured with an older timing protocol (page faults included): recalibrate with "
                     f"`archgen calibrate --batch-size {profile.batch_size}"
                     f"{'' if threads == 1 else f' --threads {threads}'}`")
        return ProfileChoice(profile, "cache", where, False, note)
    note = "built-in default profile (uncalibrated, rough)"
    command = "archgen calibrate" + "".join(f" --{k} {v}" for k, v, plain in (
        ("device", device, "cpu"), ("runtime", runtime, "torch"), ("threads", threads, 1),
        ("batch-size", batch_size or 1, None)) if v != plain)
    if sizes:
        note += (f"; this machine has {runtime} profiles for batch "
                 f"{', '.join(map(str, sizes))} only (price at --batch-size {sizes[0]}, or run `{command}`)")
    else:
        note += f"; run `{command}` for real numbers"
    return ProfileChoice(default_profile(), "built-in", None, False, note)


def adopt_device_profile(settings: SearchSettings) -> SearchSettings:
    """With ``device_profile``: its runtime and batch size become the search's (a latency batch
    other than the default that disagrees with the profile is an error)."""
    if settings.device_profile is None:
        return settings
    import dataclasses

    profile = load_profile_file(settings.device_profile)
    if settings.runtime != "torch" and settings.runtime != profile.runtime:
        raise UserError(f"--runtime {settings.runtime}: the device profile {settings.device_profile} is a "
                        f"{profile.runtime} profile")
    if settings.latency_batch not in (1, profile.batch_size):
        raise UserError(f"--latency-batch {settings.latency_batch}: the device profile "
                        f"{settings.device_profile} holds for batch {profile.batch_size}")
    return dataclasses.replace(settings, latency_batch=profile.batch_size, runtime=profile.runtime)
