"""How big a device's retained desired state is with 1, 2 and 16 models (ADR 0003).

Each model's entry is a signed Deployment embedding its signed Release; the list is
resent by the broker at every reconnect, so its size is what a device with many models
pays. Printed for the test factories' release (about 1 KB signed) and for releases near
the controller's 8 KiB cap, with the 4 MiB document limit as the baseline.

    .venv/bin/python bench/desired_state_size.py
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol import (
    MAX_ENVELOPE_BYTES,
    MAX_MODELS_PER_DEVICE,
    Deployment,
    DesiredState,
    ProbationPolicy,
    Role,
)
from tests.factories import NOW, Keyring, make_release

DEVICE = "cam-berlin-0001"
# Notes long enough to bring a signed release near the controller's 8 KiB cap.
LARGE_NOTES = "x" * 6000


def desired_state_bytes(keyring: Keyring, models: int, notes: str) -> tuple[int, int]:
    """(desired state bytes, one signed release's bytes) for ``models`` models."""
    entries = []
    release_bytes = 0
    for index in range(models):
        name = f"model-{index:02d}"
        release = make_release(model=name, notes=notes).sign(keyring.keys[Role.RELEASE])
        release_bytes = len(release.to_bytes())
        deployment = Deployment(
            device_id=DEVICE,
            model=name,
            sequence=index + 1,
            issued_at=NOW,
            expires=NOW + timedelta(hours=1),
            release=release.to_json_obj(),
            probation=ProbationPolicy(),
        ).sign(keyring.keys[Role.DEPLOYMENT])
        entries.append(deployment.to_json_obj())
    payload = DesiredState(device_id=DEVICE, deployments=entries).to_payload()
    return len(payload), release_bytes


def main() -> None:
    keyring = Keyring()
    print(f"document limit (baseline): {MAX_ENVELOPE_BYTES} bytes")
    for label, notes in (("typical release", ""), ("release near the 8 KiB cap", LARGE_NOTES)):
        for models in (1, 2, MAX_MODELS_PER_DEVICE):
            size, release = desired_state_bytes(keyring, models, notes)
            print(
                f"{label} ({release} bytes signed), {models:2d} models: {size:7d} bytes "
                f"({size / MAX_ENVELOPE_BYTES:.1%} of the limit)"
            )


if __name__ == "__main__":
    main()
