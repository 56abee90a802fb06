"""The artifact_mirrors setting: base URLs from the environment or TOML, checked at start."""

from __future__ import annotations

import pytest

from controller.errors import ConfigError
from controller.settings import load_settings


def test_mirrors_come_from_a_comma_separated_variable_in_order() -> None:
    settings = load_settings(
        environ={"EDGEFLEET_ARTIFACT_MIRRORS": "http://a.example:8080/x/, https://cdn.example"}
    )
    assert settings.artifact_mirrors == ["http://a.example:8080/x", "https://cdn.example"]


def test_no_mirrors_by_default() -> None:
    assert load_settings(environ={}).artifact_mirrors == []


@pytest.mark.parametrize(
    "url", ["ftp://a.example", "a.example", "https://u:p@a.example", "https://a.example/?k=1"]
)
def test_a_mirror_that_is_not_a_plain_http_base_url_is_refused_at_start(url: str) -> None:
    with pytest.raises(ConfigError, match="artifact_mirrors"):
        load_settings(environ={"EDGEFLEET_ARTIFACT_MIRRORS": url})
