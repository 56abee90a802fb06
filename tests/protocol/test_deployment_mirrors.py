"""Artifact mirrors in a deployment: validated base URLs, written only when there are some."""

from __future__ import annotations

import pytest

from protocol import (
    MAX_ARTIFACT_MIRRORS,
    Deployment,
    MalformedDocumentError,
    Role,
    mirror_artifact_url,
)
from tests.factories import Keyring, make_deployment, make_release

DIGEST = "ab" * 32


def test_deployment_without_mirrors_has_no_mirrors_field(keyring: Keyring) -> None:
    deployment = make_deployment(keyring.sign(make_release(), Role.RELEASE))
    assert "mirrors" not in deployment.to_json_obj()
    assert b"mirrors" not in deployment.to_payload()


def test_mirrors_survive_signing_in_order(keyring: Keyring) -> None:
    mirrors = ["https://cdn.example/edgefleet/", "http://10.0.0.5:8080/a"]
    deployment = make_deployment(keyring.sign(make_release(), Role.RELEASE), mirrors=mirrors)
    parsed = Deployment.from_payload(deployment.to_payload())
    assert parsed.mirrors == ["https://cdn.example/edgefleet", "http://10.0.0.5:8080/a"]


def test_a_reader_without_the_field_keeps_it_as_unknown(keyring: Keyring) -> None:
    """What an agent from before mirrors does: keeps the field (§4.2) and ignores it."""
    obj = make_deployment(
        keyring.sign(make_release(), Role.RELEASE), mirrors=["https://m.example"]
    ).to_json_obj()
    assert obj["mirrors"] == ["https://m.example"]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://m.example/a",
        "file:///srv/artifacts",
        "https://",
        "m.example/a",
        "https://user:secret@m.example/a",
        "https://m.example/a?token=1",
        "https://m.example/" + "a" * 600,
    ],
)
def test_mirror_that_is_not_a_plain_http_base_url_is_refused(url: str, keyring: Keyring) -> None:
    obj = make_deployment(keyring.sign(make_release(), Role.RELEASE)).to_json_obj()
    obj["mirrors"] = [url]
    with pytest.raises(MalformedDocumentError, match="mirrors"):
        Deployment.from_json_obj(obj)


def test_more_mirrors_than_the_bound_are_refused(keyring: Keyring) -> None:
    obj = make_deployment(keyring.sign(make_release(), Role.RELEASE)).to_json_obj()
    obj["mirrors"] = [f"https://m{i}.example" for i in range(MAX_ARTIFACT_MIRRORS + 1)]
    with pytest.raises(MalformedDocumentError, match="mirrors"):
        Deployment.from_json_obj(obj)


def test_mirror_url_is_the_store_layout() -> None:
    assert mirror_artifact_url("https://m.example/x/", DIGEST) == (
        f"https://m.example/x/sha256/{DIGEST}"
    )
