"""The check bundle: a release's golden cases and reference profile, in one ``.npz`` file.

A release names its bundle by SHA-256 and length (``protocol.CheckBundleRef``), so the
signed document stays small whatever the model's inputs weigh. The file is a plain numpy
``.npz`` (a zip of ``.npy`` arrays, stored uncompressed) that needs no pickle to read:

- ``manifest``: a ``uint8`` array holding UTF-8 JSON::

      {"format": "edgefleet-check-bundle", "version": 1,
       "cases": [{"inputs": ["x"], "outputs": ["probabilities"], "atol": 1e-4, "rtol": 1e-3}],
       "reference_profile": {...protocol.ReferenceProfile...} | null}

- ``case{i}.input{j}`` / ``case{i}.output{j}``: the ``j``-th input (output) of golden case
  ``i``, named by the manifest's lists in that order.

Invariants: every member's ``.npy`` header is checked before any array is read
(``npz_headers``: at most 4 KiB, and no more bytes declared than the member holds, so a
bundle never makes numpy allocate more than its own size); every array is read with
``allow_pickle=False``, has an Open Inference
Protocol datatype and comes back in native byte order; the manifest names exactly the
arrays the file holds; a bundle that breaks any of this is a ``CheckBundleError`` with the
reason, never a half-read bundle. Readers are handed files whose hash was verified first.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from pydantic import ValidationError

from protocol import ReferenceProfile

from .backend import Array
from .datatypes import datatype_of_numpy
from .errors import CheckBundleError
from .npz_headers import verify_npz_members

__all__ = [
    "CheckBundle",
    "GoldenCase",
    "read_check_bundle",
    "read_reference_profile",
    "write_check_bundle",
]

BUNDLE_FORMAT = "edgefleet-check-bundle"
BUNDLE_VERSION = 1
MANIFEST_KEY = "manifest"
MAX_MANIFEST_BYTES = 1024 * 1024


@dataclass(frozen=True)
class GoldenCase:
    """Inputs a device runs before activation, and the outputs it must reproduce."""

    inputs: Mapping[str, Array]
    expected_outputs: Mapping[str, Array]
    atol: float = 1e-4
    rtol: float = 1e-3


@dataclass(frozen=True)
class CheckBundle:
    golden: tuple[GoldenCase, ...] = ()
    reference_profile: ReferenceProfile | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def write_check_bundle(bundle: CheckBundle, target: Path | BinaryIO) -> None:
    """Write ``bundle`` as an uncompressed ``.npz`` (to a path or an open binary file)."""
    arrays: dict[str, Array] = {}
    cases = []
    for i, case in enumerate(bundle.golden):
        for kind, tensors in (("input", case.inputs), ("output", case.expected_outputs)):
            for j, (name, array) in enumerate(tensors.items()):
                if datatype_of_numpy(array.dtype) is None:
                    raise CheckBundleError(
                        f"golden case {i}: {kind} {name!r} has dtype {array.dtype.name}, "
                        "which has no OIP datatype"
                    )
                arrays[f"case{i}.{kind}{j}"] = np.ascontiguousarray(array)
        cases.append(
            {
                "inputs": list(case.inputs),
                "outputs": list(case.expected_outputs),
                "atol": case.atol,
                "rtol": case.rtol,
            }
        )
    profile = bundle.reference_profile
    manifest = {
        **bundle.extra,
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "cases": cases,
        "reference_profile": None if profile is None else profile.model_dump(mode="json"),
    }
    encoded = json.dumps(manifest, allow_nan=False, sort_keys=True).encode("utf-8")
    arrays[MANIFEST_KEY] = np.frombuffer(encoded, dtype=np.uint8)
    np.savez(target, allow_pickle=False, **arrays)


def read_check_bundle(source: Path | bytes) -> CheckBundle:
    """Read and check a whole bundle; raises ``CheckBundleError``."""
    with _open(source) as npz:
        manifest = _manifest(npz)
        cases = manifest["cases"]
        expected_keys = {MANIFEST_KEY} | {
            f"case{i}.{kind}{j}"
            for i, case in enumerate(cases)
            for kind in ("input", "output")
            for j in range(len(case[f"{kind}s"]))
        }
        if set(npz.files) != expected_keys:
            extra = sorted(set(npz.files) - expected_keys)
            missing = sorted(expected_keys - set(npz.files))
            raise CheckBundleError(
                f"the bundle's arrays do not match its manifest (missing {missing}, "
                f"unexpected {extra})"
            )
        golden = tuple(
            GoldenCase(
                inputs={n: _array(npz, f"case{i}.input{j}") for j, n in enumerate(c["inputs"])},
                expected_outputs={
                    n: _array(npz, f"case{i}.output{j}") for j, n in enumerate(c["outputs"])
                },
                atol=c["atol"],
                rtol=c["rtol"],
            )
            for i, c in enumerate(cases)
        )
        return CheckBundle(golden, _profile(manifest), _extra(manifest))


def read_reference_profile(source: Path | bytes) -> ReferenceProfile | None:
    """Only the bundle's reference profile: reads the manifest, not the golden tensors."""
    with _open(source) as npz:
        return _profile(_manifest(npz))


class _Npz:
    """``np.load``'s lazy ``NpzFile`` with every failure turned into ``CheckBundleError``."""

    def __init__(self, source: Path | bytes) -> None:
        try:
            handle = io.BytesIO(source) if isinstance(source, bytes) else source
            loaded = np.load(handle, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise CheckBundleError(f"not a check bundle (.npz): {exc}") from exc
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise CheckBundleError("not a check bundle: a single .npy array, not an .npz")
        try:
            verify_npz_members(loaded)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            loaded.close()
            raise CheckBundleError(f"not a check bundle (.npz): {exc}") from exc
        self.npz = loaded
        self.files: list[str] = list(loaded.files)

    def get(self, key: str) -> Array:
        try:
            array: Array = self.npz[key]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise CheckBundleError(f"array {key!r} of the bundle does not read: {exc}") from exc
        return array

    def __enter__(self) -> _Npz:
        return self

    def __exit__(self, *_: object) -> None:
        self.npz.close()


def _open(source: Path | bytes) -> _Npz:
    return _Npz(source)


def _manifest(npz: _Npz) -> dict[str, Any]:
    if MANIFEST_KEY not in npz.files:
        raise CheckBundleError("the bundle has no manifest")
    raw = npz.get(MANIFEST_KEY)
    if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > MAX_MANIFEST_BYTES:
        raise CheckBundleError("the bundle's manifest is not a byte string of at most 1 MiB")
    try:
        manifest = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckBundleError(f"the bundle's manifest is not JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise CheckBundleError(f"the manifest does not say format {BUNDLE_FORMAT!r}")
    version = manifest.get("version")
    if version != BUNDLE_VERSION:
        raise CheckBundleError(
            f"check bundle version {version!r} is not supported (this code reads {BUNDLE_VERSION})"
        )
    cases = manifest.get("cases")
    if not isinstance(cases, list) or not all(_is_case(case) for case in cases):
        raise CheckBundleError(
            "the manifest's cases must each name inputs and outputs and give atol, rtol >= 0"
        )
    return manifest


def _is_case(case: object) -> bool:
    if not isinstance(case, dict):
        return False
    names_ok = all(
        isinstance(case.get(key), list)
        and case[key]
        and all(isinstance(name, str) and name for name in case[key])
        and len(set(case[key])) == len(case[key])
        for key in ("inputs", "outputs")
    )
    tolerances_ok = all(
        isinstance(case.get(key), int | float)
        and not isinstance(case.get(key), bool)
        and case[key] >= 0
        for key in ("atol", "rtol")
    )
    return names_ok and tolerances_ok


def _array(npz: _Npz, key: str) -> Array:
    array = npz.get(key)
    if datatype_of_numpy(array.dtype) is None:
        raise CheckBundleError(f"array {key!r} has dtype {array.dtype}, which has no OIP datatype")
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _profile(manifest: Mapping[str, Any]) -> ReferenceProfile | None:
    raw = manifest.get("reference_profile")
    if raw is None:
        return None
    try:
        return ReferenceProfile.model_validate(raw)
    except ValidationError as exc:
        raise CheckBundleError(f"the bundle's reference profile is invalid: {exc}") from exc


def _extra(manifest: Mapping[str, Any]) -> dict[str, Any]:
    known = {"format", "version", "cases", "reference_profile"}
    return {key: value for key, value in manifest.items() if key not in known}
