"""Controller settings: defaults, then a TOML file, then ``EDGEFLEET_*`` environment variables.

Every setting has an environment variable named ``EDGEFLEET_`` + its upper-case name
(``EDGEFLEET_DATA_DIR``, ``EDGEFLEET_DATABASE_URL``, ``EDGEFLEET_MAX_UPLOAD_BYTES``…); a
TOML file given by ``EDGEFLEET_CONFIG`` (or ``--config``) holds the same names in lower
case. Command-line flags, applied by the CLI, win over both.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

__all__ = ["ENV_PREFIX", "Settings", "load_settings"]

ENV_PREFIX = "EDGEFLEET_"
_MIB = 1024 * 1024


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Path("edgefleet-data")
    # Empty means a SQLite file in the data dir.
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # "embedded" runs an amqtt broker in the controller; otherwise mqtt://host:port.
    broker: str = "embedded"
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(default=1883, ge=0, le=65535)
    topic_prefix: str = "edgefleet/v1"

    max_upload_bytes: int = Field(default=512 * _MIB, gt=0)
    max_validation_bytes: int = Field(default=256 * _MIB, gt=0)
    # Limits for converter jobs (inspection, quantization, profiling).
    job_memory_bytes: int = Field(default=4096 * _MIB, gt=0)
    job_cpu_s: int = Field(default=600, gt=0)
    job_wall_s: float = Field(default=900.0, gt=0)
    max_tensor_bytes: int = Field(default=1024 * _MIB, gt=0)

    # The quality gate for variants.
    max_accuracy_drop_points: float = Field(default=1.0, ge=0)
    min_top1_agreement: float = Field(default=0.99, ge=0, le=1)
    golden_count: int = Field(default=4, ge=1, le=64)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'edgefleet.db').resolve()}"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def work_dir(self) -> Path:
        return self.data_dir / "work"


def load_settings(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge defaults, the TOML file, the environment and explicit overrides."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_file = config_file or (
        Path(env["EDGEFLEET_CONFIG"]) if "EDGEFLEET_CONFIG" in env else None
    )
    if config_file is not None:
        try:
            values.update(tomllib.loads(config_file.read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
    for name in Settings.model_fields:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = env[key]
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid settings: {problems}") from exc
