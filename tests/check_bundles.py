"""Check bundles built in tests: golden cases and a reference profile as the agent reads them."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

from protocol import CheckBundleRef, ReferenceProfile
from tensors import CheckBundle, GoldenCase, write_check_bundle


def bundle_bytes(
    golden: Sequence[GoldenCase] = (), reference_profile: ReferenceProfile | None = None
) -> bytes:
    buffer = io.BytesIO()
    write_check_bundle(CheckBundle(tuple(golden), reference_profile), buffer)
    return buffer.getvalue()


def ref_of(data: bytes) -> CheckBundleRef:
    return CheckBundleRef(sha256=hashlib.sha256(data).hexdigest(), length=len(data))


# Where each bundle written in this test process went, so a check can find a release's.
_WRITTEN: dict[str, Path] = {}


def bundle_path(directory: Path, ref: CheckBundleRef) -> Path:
    return directory / f"bundle-{ref.sha256}.npz"


def written_bundle(ref: CheckBundleRef) -> Path:
    """The file ``write_bundle`` wrote for ``ref`` (in any directory)."""
    return _WRITTEN[ref.sha256]


def write_bundle(
    directory: Path,
    golden: Sequence[GoldenCase] = (),
    reference_profile: ReferenceProfile | None = None,
) -> CheckBundleRef:
    """Write a bundle to ``bundle_path(directory, ref)`` and return its reference."""
    data = bundle_bytes(golden, reference_profile)
    ref = ref_of(data)
    path = bundle_path(directory, ref)
    path.write_bytes(data)
    _WRITTEN[ref.sha256] = path
    return ref
