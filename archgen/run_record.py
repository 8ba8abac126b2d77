"""What a search's ``config.yaml`` records beside its settings (the data split's fingerprint, the
latency profile its trials are priced with), and whether a run directory holds the same search
(a resume) or another one.

The profile that prices a run's trials is kept in the run directory (``PROFILE_COPY``): a resume
without ``--device-profile`` prices with it, not with whatever this machine has cached since (a
recalibration, a first calibration after a run on the built-in profile), so that every trial's
``est_ms`` and the Pareto objective's values come from one profile; a resume with another
``--device-profile`` is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import TYPE_CHECKING

from archgen.errors import SearchConfigError
from archgen.fsio import atomic_write_yaml
from archgen.inputs import excerpt, load_document
from archgen.redact import redact
from archgen.settings import CONFIG_KEYS_THAT_DEFINE_A_RUN, SearchSettings
from archgen.worker import profile_choice

if TYPE_CHECKING:
    from archgen.data import Dataset
    from costmodel.device_profile import DeviceProfile

log = logging.getLogger(__name__)

PROFILE_COPY = "latency_profile.json"  # in the run directory: the profile its trials are priced with


def profile_id(profile: DeviceProfile) -> str:
    """A hash of a profile's contents: trials priced by two profiles (refitted, another device's,
    another runtime or batch) have estimates that do not compare. Compare ids computed by the
    same code (a resume hashes the run's copy and the profile now alike)."""
    text = json.dumps(profile.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resume_profile(settings: SearchSettings) -> SearchSettings:
    """A resume (``config.yaml`` and ``PROFILE_COPY`` in ``out``) without ``device_profile``
    prices with the copy of the profile the run began with."""
    copy = settings.run_dir / PROFILE_COPY
    if settings.device_profile is not None or not (settings.run_dir / "config.yaml").is_file() or not copy.is_file():
        return settings
    log.info("resuming with the latency profile the run began with (%s)", copy)
    return dataclasses.replace(settings, device_profile=str(copy))


def split_fingerprint(dataset: Dataset) -> str:
    """A hash of the training and validation splits (images and labels) and the test split's
    size: equal fingerprints mean the same images sit in the same splits."""
    h = hashlib.sha256()
    for split in (dataset.train, dataset.val):
        h.update(split.x.numpy().tobytes())
        h.update(split.y.numpy().tobytes())
    h.update(str(dataset.test.n).encode())
    return h.hexdigest()[:16]


def check_resume(settings: SearchSettings, fingerprint: str) -> bool:
    """True when ``out`` holds an earlier run of the same search (resume); error when it
    holds a different one, the same one on other data splits (images that trials trained
    on must never move into the test split), or one whose trials were priced with another
    latency profile (their ``est_ms``, and the Pareto objective's values, would mix two
    devices or two fits)."""
    cfg = settings.run_dir / "config.yaml"
    if not cfg.exists():
        return False
    old = load_document(cfg, "run configuration", SearchConfigError)
    if not isinstance(old, dict):
        raise SearchConfigError(f"{cfg}: damaged run configuration; use another --out")
    new = settings.to_yaml_dict()
    if old.get("storage") is not None:  # earlier versions wrote some URLs unredacted: compare redacted
        old["storage"] = redact(old["storage"])
    diff = [k for k in CONFIG_KEYS_THAT_DEFINE_A_RUN if old.get(k) != new.get(k)]
    if diff:
        raise SearchConfigError(
            f"{settings.run_dir} holds a different search "
            f"({', '.join(f'{k}: {excerpt(old.get(k))} there, {excerpt(new.get(k))} now' for k in diff)}); "
            "use another --out or the same settings to resume"
        )
    if old.get("split_fingerprint") not in (None, fingerprint):
        raise SearchConfigError(
            f"{settings.run_dir}: the data behind {excerpt(settings.data)} changed since this search "
            "began (its train/validation/test split would move); use another --out"
        )
    _check_profile(settings, old)
    return True


def _check_profile(settings: SearchSettings, old: dict) -> None:
    """Refuse a resume priced by another profile than the run's copy (or, for a run without one,
    than the hash its ``config.yaml`` recorded)."""
    from archgen.profiles import load_profile_file

    now = profile_choice(settings).profile
    copy = settings.run_dir / PROFILE_COPY
    if copy.is_file():
        same = profile_id(load_profile_file(copy)) == profile_id(now)
    else:
        same = old.get("latency_profile_id") in (None, profile_id(now))
    if not same:
        raise SearchConfigError(
            f"{settings.run_dir}: its trials were priced with another latency profile "
            f"({excerpt(old.get('latency_profile_device'))}) than --device-profile {excerpt(settings.device_profile)}; "
            "their estimates would not compare: resume without --device-profile (it prices with the "
            f"run's own, {PROFILE_COPY}), or use another --out"
        )


def write_config(settings: SearchSettings, fingerprint: str) -> None:
    """Write ``config.yaml``: the settings, the data split's fingerprint and the latency profile
    the trials are priced with (``RUN_RECORD_KEYS``)."""
    d = settings.to_yaml_dict()
    d["split_fingerprint"] = fingerprint
    choice = profile_choice(settings)
    d["latency_profile"] = ("built-in default (uncalibrated)" if choice.profile.is_default
                            else "another device's profile" if choice.foreign else "calibrated")
    d["latency_profile_device"] = choice.profile.describe()
    d["latency_profile_id"] = profile_id(choice.profile)
    if choice.path is not None:
        d["latency_profile_path"] = str(choice.path)
    copy = settings.run_dir / PROFILE_COPY
    if choice.path is None or choice.path.resolve() != copy.resolve():
        choice.profile.save(copy)
    atomic_write_yaml(settings.run_dir / "config.yaml", d)
