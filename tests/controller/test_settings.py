"""Settings come from defaults, a TOML file, the environment and flags, in that order."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.errors import ConfigError
from controller.settings import load_settings


def test_environment_overrides_file_and_flags_override_both(tmp_path: Path) -> None:
    config = tmp_path / "edgefleet.toml"
    config.write_text('port = 9000\nhost = "0.0.0.0"\nmax_upload_bytes = 1000\n')
    settings = load_settings(
        config_file=config,
        environ={"EDGEFLEET_PORT": "9100", "EDGEFLEET_MAX_UPLOAD_BYTES": "2000"},
        overrides={"port": 9200},
    )
    assert (settings.host, settings.port, settings.max_upload_bytes) == ("0.0.0.0", 9200, 2000)


def test_sqlite_in_the_data_dir_is_the_default_database(tmp_path: Path) -> None:
    settings = load_settings(environ={"EDGEFLEET_DATA_DIR": str(tmp_path)})
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'edgefleet.db'}"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"EDGEFLEET_PORT": "not-a-port"}, "port"),
        ({"EDGEFLEET_MQTT_PORT": "70000"}, "mqtt_port"),
        ({"EDGEFLEET_MIN_TOP1_AGREEMENT": "2"}, "min_top1_agreement"),
    ],
)
def test_invalid_settings_are_a_clear_error(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=environ)


def test_unknown_setting_in_the_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "edgefleet.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="prot"):
        load_settings(config_file=config, environ={})


def test_unreadable_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(config_file=tmp_path / "missing.toml", environ={})
