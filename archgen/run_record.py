"""What a search's ``config.yaml`` records beside its settings (the data split's fingerprint, the
latency profile its trials are priced with), and whether a run directory holds the same search
(a resume) or another one.
"""

from __future__ import annotations

import hashlib
import json
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


def profile_id(profile: DeviceProfile) -> str:
    """A hash of a profile's contents: trials priced by two profiles (refitted, another device's,
    another runtime or batch) have estimates that do not compare."""
    text = json.dumps(profile.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
    if old.get("latency_profile_id") not in (None, profile_id(profile_choice(settings).profile)):
        raise SearchConfigError(
            f"{settings.run_dir}: its trials were priced with another latency profile "
            f"({excerpt(old.get('latency_profile_device'))}, {excerpt(old.get('latency_profile_path') or 'cached')}); "
            "their estimates would not compare with this one's: resume with the same --device-profile "
            "and calibration, or use another --out"
        )
    return True


def write_config(settings: SearchSettings, fingerprint: str) -> None:
    """Write ``config.yaml``: the settings, the data split's fingerprint and the latency profile
    the trials are priced with (``RUN_RECORD_KEYS``)."""
    d = settings.to_yaml_dict()
    d["split_fingerprint"] = fingerprint
    choice = profile_choice(settings)
    d["latency_profile"] = ("built-in default (uncalibrated)" if choice.is_default
                            else "another device's profile" if choice.foreign else "calibrated")
    d["latency_profile_device"] = choice.profile.describe()
    d["latency_profile_id"] = profile_id(choice.profile)
    if choice.path is not None:
        d["latency_profile_path"] = str(choice.path)
    atomic_write_yaml(settings.run_dir / "config.yaml", d)
