"""A release's provenance: bounded, signed with the release, ignored by older readers."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from pydantic import create_model

from protocol import (
    MAX_PROVENANCE_BYTES,
    MAX_PROVENANCE_DATASETS,
    MAX_PROVENANCE_ENTRIES,
    MAX_PROVENANCE_TEXT_CHARS,
    MAX_RELEASE_ENVELOPE_BYTES,
    SIGNING_ROLE,
    DatasetRef,
    Document,
    EvaluationSummary,
    MalformedDocumentError,
    ParentRef,
    Provenance,
    Release,
    Role,
    SignatureError,
    VariantRecipe,
    verify_document,
)
from tests.factories import NOW, Keyring, make_release

SHA = "ab" * 32
# The evaluation report a variant's release carries in full beside its provenance.
FULL_REPORT: dict[str, Any] = {
    "samples": 1797,
    "size_bytes_parent": 2_000_000_000,
    "size_bytes_candidate": 500_000_000,
    "size_ratio": 0.2500000001,
    "latency_ms_parent": 12.345678901,
    "latency_ms_candidate": 9.87654321,
    "latency_ratio": 0.8000000001,
    "latency_batch_size": 64,
    "accuracy_parent": 0.9716193656,
    "accuracy_candidate": 0.9699499165,
    "accuracy_drop_points": 0.1669449082,
    "top1_agreement": 0.9977740679,
    "max_abs_error": 0.0123456789,
    "nonfinite_outputs": 0,
    "reference": "labels",
}


def rich_provenance(**overrides: Any) -> Provenance:
    fields: dict[str, Any] = {
        "source": "mlflow",
        "source_uri": "models:/digits/3",
        "run_id": "0f" * 16,
        "experiment": "digits-cnn",
        "params": {"lr": "0.001", "epochs": "20"},
        "metrics": {"val_accuracy": 0.97},
        "datasets": [DatasetRef(name="digits-train", digest="d1g35t", source="s3://x/y")],
        "parent": ParentRef(model="digits", version=1, sha256=SHA),
        "variant": VariantRecipe(mode="int8-dynamic", gate={"max_accuracy_drop_points": 1.0}),
        "evaluation": EvaluationSummary(accuracy_parent=0.97, accuracy_candidate=0.969),
        "channel": "production",
        "pipeline": "pl-0001",
        "approved_by": "alice",
        "approved_at": NOW,
        "created_by": "ci",
        "released_by": "pipeline",
    }
    return Provenance(**(fields | overrides))


def largest_provenance() -> Provenance:
    """Every field at its bound, then parameters added until one more would not fit."""
    text = "x" * MAX_PROVENANCE_TEXT_CHARS
    name = "n" * 128
    base = rich_provenance(
        source="s" * 32,
        source_uri=text,
        run_id=text,
        experiment=text,
        params={},
        metrics={},
        datasets=[],
        parent=ParentRef(model="m" * 128, version=2**31 - 1, sha256=SHA),
        variant=VariantRecipe(
            mode="v" * 32, gate={f"{i:0>64}": -1.2345678901234567e-300 for i in range(8)}
        ),
        evaluation=EvaluationSummary(
            samples=2**53 - 1,
            **{
                k: 1.2345678901234567e-300
                for k in (
                    "accuracy_parent",
                    "accuracy_candidate",
                    "top1_agreement",
                    "latency_ratio",
                    "size_ratio",
                )
            },
        ),
        channel=name,
        pipeline=name,
        approved_by=name,
        created_by=name,
        released_by=name,
    )
    params: dict[str, str] = {}
    while True:
        more = params | {f"p{len(params):03}": "v" * 40}
        if len(more) > MAX_PROVENANCE_ENTRIES:
            break
        try:
            candidate = base.model_copy(update={"params": more})
            Provenance.model_validate(candidate.model_dump())
        except ValueError:
            break
        params = more
    largest = Provenance.model_validate(base.model_dump() | {"params": params})
    assert largest.size_bytes() > MAX_PROVENANCE_BYTES - 60
    return largest


def test_a_release_with_the_largest_provenance_fits_the_envelope_limit() -> None:
    # Three release keys, a full evaluation report and a few tensors on top of it.
    keyring = Keyring(keys={role: [*(Keyring().keys[role] * 3)] for role in Role})
    release = make_release(
        model="m" * 128,
        evaluation=FULL_REPORT,
        notes="variant int8-dynamic",
        provenance=largest_provenance(),
    )
    envelope = release.sign(keyring.keys[Role.RELEASE])
    size = len(envelope.to_bytes())
    assert size <= MAX_RELEASE_ENVELOPE_BYTES, size


def test_provenance_over_its_byte_bound_is_refused() -> None:
    obj = make_release(provenance=largest_provenance()).to_json_obj()
    obj["provenance"]["params"] |= {f"q{i:02}": "w" * 200 for i in range(10)}
    with pytest.raises(MalformedDocumentError, match="provenance"):
        Release.from_json_obj(obj)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("params", {f"p{i}": "v" for i in range(MAX_PROVENANCE_ENTRIES + 1)}),
        ("metrics", {f"m{i}": 0.5 for i in range(MAX_PROVENANCE_ENTRIES + 1)}),
        ("datasets", [{"name": "d"}] * (MAX_PROVENANCE_DATASETS + 1)),
        ("run_id", "r" * (MAX_PROVENANCE_TEXT_CHARS + 1)),
        ("params", {"k": "v" * (MAX_PROVENANCE_TEXT_CHARS + 1)}),
        ("approved_by", "a" * 129),
        ("source", "MLflow Registry"),
        ("metrics", {"loss": math.nan}),
        ("parent", {"model": "../etc", "version": 1, "sha256": SHA}),
        ("parent", {"model": "digits", "version": 0, "sha256": SHA}),
        ("approved_at", "2026-12-04T12:00:00"),
    ],
)
def test_provenance_out_of_bounds_is_refused(field: str, value: Any) -> None:
    obj = make_release(provenance=rich_provenance()).to_json_obj()
    obj["provenance"][field] = value
    with pytest.raises(MalformedDocumentError, match="provenance"):
        Release.from_json_obj(obj)


def test_provenance_is_signed_with_the_release(keyring: Keyring) -> None:
    release = make_release(provenance=rich_provenance())
    envelope = release.sign(keyring.keys[Role.RELEASE])
    verified = verify_document(envelope, Release, keyring.trust_root())
    assert verified.provenance == release.provenance
    assert verified.provenance is not None
    assert verified.provenance.parent == ParentRef(model="digits", version=1, sha256=SHA)
    assert verified.provenance.approved_at == NOW


def test_changing_the_provenance_breaks_the_signature(keyring: Keyring) -> None:
    envelope = make_release(provenance=rich_provenance()).sign(keyring.keys[Role.RELEASE])
    forged = Release.from_payload(envelope.payload).to_json_obj()
    forged["provenance"]["approved_by"] = "mallory"
    tampered = dataclasses.replace(envelope, payload=Release.from_json_obj(forged).to_payload())
    with pytest.raises(SignatureError):
        verify_document(tampered, Release, keyring.trust_root())


def test_a_release_without_provenance_still_reads(keyring: Keyring) -> None:
    # Every release signed before provenance existed.
    envelope = make_release().sign(keyring.keys[Role.RELEASE])
    release = verify_document(envelope, Release, keyring.trust_root())
    assert release.provenance is None
    assert "provenance" not in (release.model_extra or {})


def test_an_older_reader_verifies_a_release_with_provenance_and_keeps_it(
    keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    older = _release_reader_without("provenance")
    monkeypatch.setitem(SIGNING_ROLE, older, Role.RELEASE)
    release = make_release(provenance=rich_provenance())
    envelope = release.sign(keyring.keys[Role.RELEASE])

    read = verify_document(envelope, older, keyring.trust_root())

    assert read.model_dump()["artifact"] == release.artifact.model_dump()
    # Unknown to it, the block is kept as it was: relayed or re-serialized, it survives.
    assert read.model_extra is not None
    assert read.model_extra["provenance"] == release.to_json_obj()["provenance"]
    assert read.to_payload() == release.to_payload()


def test_newer_provenance_fields_survive_this_reader() -> None:
    obj = make_release(provenance=rich_provenance()).to_json_obj()
    obj["provenance"]["attestation"] = {"slsa": "v1"}
    obj["provenance"]["source"] = "huggingface"
    release = Release.from_json_obj(obj)
    assert release.provenance is not None
    assert release.provenance.source == "huggingface"
    assert Release.from_payload(release.to_payload()).to_json_obj() == obj


def _release_reader_without(field: str) -> type[Document]:
    """``Release`` as a reader written before ``field`` existed would declare it."""
    fields: dict[str, Any] = {
        name: (info.annotation, info)
        for name, info in Release.model_fields.items()
        if name != field
    }
    older: type[Document] = create_model("ReleaseBefore", __base__=Document, **fields)
    older.PAYLOAD_TYPE = Release.PAYLOAD_TYPE
    older.SCHEMA_VERSION = older.MIN_SCHEMA_VERSION = Release.SCHEMA_VERSION
    return older
