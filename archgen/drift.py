"""Is this machine in the state its device profile was fitted in? A profile keeps the time of a
small reference workload (``costmodel.measure.REFERENCE_GEOMS``); re-timing it tells a model
error from a machine in another state (load on the machine, frequency scaling, a busy sibling
hyperthread): on a shared machine the same network can run 2x slower than when the profile was
fitted, every layer alike."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from costmodel.device_profile import DeviceProfile

log = logging.getLogger(__name__)

# The machine counts as in another state beyond this relative change of the reference time.
DRIFT_LIMIT = 0.15


@dataclass(frozen=True)
class DriftReport:
    """The reference workload's time when the profile was fitted and now."""

    profile_ms: float
    now_ms: float

    @property
    def ratio(self) -> float:
        return self.now_ms / self.profile_ms

    @property
    def ok(self) -> bool:
        return abs(self.ratio - 1.0) <= DRIFT_LIMIT

    def line(self) -> str:
        change = f"{100 * (self.ratio - 1):+.0f}%"
        if self.ok:
            return (f"this machine runs as when its profile was fitted: reference workload {self.now_ms:.3f} ms "
                    f"now, {self.profile_ms:.3f} ms then ({change})")
        slower = "slower" if self.ratio > 1 else "faster"
        return (f"this machine runs {abs(self.ratio - 1) * 100:.0f}% {slower} than when its profile was fitted "
                f"(reference workload {self.now_ms:.3f} ms now, {self.profile_ms:.3f} ms then): load, frequency "
                "scaling or a busy sibling core; measured latencies will differ from the estimates by about "
                f"as much (recalibrate with `archgen calibrate` if this state is the normal one)")


def check_drift(profile: DeviceProfile, device: str = "cpu") -> DriftReport | None:
    """Re-time the reference workload as the profile's runtime and threads run it here. None
    when there is nothing to compare: the profile holds no reference time, is the built-in one,
    or is of another device."""
    from archgen.profiles import measures_another_kind
    from costmodel.device_profile import predates_steady_allocator

    if profile.is_default or profile.reference_ms is None or profile.is_foreign() or \
            measures_another_kind(profile, device):
        return None  # nothing of this machine to compare with (a CUDA profile for a run on the CPU)
    # Its reference time includes page faults: no comparison. (With the thresholds raised but mmap
    # on, the reference workload's batch-1 buffers, well under 32 MiB, were timed as now.)
    if predates_steady_allocator(profile) and "allocator" not in profile.protocol:
        log.warning("the device profile was measured with an older timing protocol (page faults "
                    "included); its reference workload is not comparable: recalibrate with `archgen calibrate`")
        return None
    threads = int(profile.context.get("threads") or 1)
    if profile.runtime == "onnxruntime":
        from costmodel.ort import reference_ms

        now = reference_ms(threads)
    else:
        from costmodel.measure import reference_ms

        now = reference_ms(device if profile.context.get("device") != "cpu" else "cpu", threads)
    return DriftReport(float(profile.reference_ms), now)


def warn_if_drifted(profile: DeviceProfile, device: str = "cpu", when: str = "") -> DriftReport | None:
    """``check_drift`` and one warning line when the machine is in another state."""
    report = check_drift(profile, device)
    if report is not None and not report.ok:
        log.warning("%s%s", f"{when}: " if when else "", report.line())
    return report
