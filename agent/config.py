"""Agent settings: a TOML file, then ``EDGEFLEET_AGENT_*`` environment variables.

Every setting has an environment variable named ``EDGEFLEET_AGENT_`` + its upper-case
name (``EDGEFLEET_AGENT_DEVICE_ID``, ``EDGEFLEET_AGENT_INFERENCE_PORT``…) that wins over
the file. Relative paths in the file are relative to the file's directory.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

import mqttlink
from protocol import DEFAULT_PREFIX, DEVICE_ID_PATTERN

from .errors import ConfigurationError

__all__ = ["ENV_PREFIX", "AgentConfig", "load_config"]

ENV_PREFIX = "EDGEFLEET_AGENT_"
_MIB = 1024 * 1024


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    data_dir: Path
    trust_root: Path = Field(description="The trust root installed at provisioning.")
    # One URL, or the URLs of a cluster's nodes separated by commas (tried in order).
    broker_url: str = "mqtt://127.0.0.1:1883"
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    topic_prefix: str = DEFAULT_PREFIX
    controller_url: str = "http://127.0.0.1:8080"
    controller_token: str | None = None
    # TLS as the enrolled device (written by enrollment with a CA): trust only this CA for
    # the broker and the controller, and present this certificate (mTLS) to the broker.
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    inference_port: int = Field(default=8500, ge=0, le=65535)
    inference_host: str = "127.0.0.1"
    # Also serve the API on this Unix domain socket (mode 0660), e.g.
    # /run/edgefleet/infer.sock: for applications on the device that want no TCP port.
    inference_socket: Path | None = None
    # False: only the in-process Python API serves (the simulator runs thousands of
    # agents in one process, with no port each).
    inference_api: bool = True
    # Request bodies (agent/serving/http_api.py): the largest, the largest JSON one, and
    # what bodies in flight may take together (JSON counted 24 times: what it expands to).
    inference_max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    inference_max_json_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    inference_body_budget_bytes: int = Field(default=96 * 1024 * 1024, gt=0)
    # ONNX Runtime: execution providers in order of preference, and threads per session
    # ("auto": the device's physical cores this process may run on).
    execution_providers: list[str] = ["CPUExecutionProvider"]
    inference_threads: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    # Statistics windows, published as telemetry and kept for probation.
    stats_window_s: float = Field(default=10.0, gt=0)
    # Captured samples (only under a capture order): how often the queue is uploaded.
    capture_upload_interval_s: float = Field(default=30.0, gt=0)

    # Downloads.
    download_min_rate_bytes_per_s: int = Field(default=64 * 1024, gt=0)
    download_min_deadline_s: float = Field(default=60.0, gt=0)
    download_read_timeout_s: float = Field(default=20.0, gt=0)
    # Enough, with backoff, to ride out a controller restart within the deadline.
    download_max_attempts: int = Field(default=10, ge=1)
    free_disk_margin_bytes: int = Field(default=64 * _MIB, ge=0)
    # The sandboxed check before activation.
    sandbox_memory_bytes: int = Field(default=2048 * _MIB, gt=0)
    # The agent's resident memory with every model loaded; None: no budget (ADR 0003).
    memory_budget_bytes: int | None = Field(default=None, gt=0)
    sandbox_cpu_s: int = Field(default=120, gt=0)
    # The most of the elapsed time a shadow model (a candidate run beside the serving one
    # on copies of live requests) may spend running; a shadow order may ask for less.
    # 0 refuses every shadow order.
    shadow_max_cpu_fraction: float = Field(default=0.2, ge=0, le=1)
    sandbox_wall_s: float = Field(default=180.0, gt=0)
    shutdown_timeout_s: float = Field(default=10.0, gt=0)
    # Fault injection for crash tests and the simulator: stop making progress once the
    # journal records this state (the process stays alive until killed). A table
    # ({model = state, ...}) pauses each listed model in its own state.
    pause_in_state: str | dict[str, str] | None = None
    # Fault injection: a device clock this many seconds off (negative: behind).
    clock_offset_s: float = 0.0

    @model_validator(mode="after")
    def _certificate_with_key(self) -> AgentConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_cert_file is not None and self.tls_ca_file is None:
            raise ValueError("a client certificate needs tls_ca_file, the CA that issued it")
        return self

    @field_validator("broker_url")
    @classmethod
    def _mqtt_url(cls, value: str) -> str:
        try:
            mqttlink.parse_broker_urls(value)
        except mqttlink.SettingsError as exc:
            raise ValueError(
                "must look like mqtt://host:port or mqtts://host:port, or several such URLs "
                f"of one broker cluster separated by commas: {exc}"
            ) from exc
        return value

    @property
    def broker_addresses(self) -> tuple[mqttlink.BrokerAddress, ...]:
        """The broker's nodes, in the order the agent tries them."""
        return mqttlink.parse_broker_urls(self.broker_url)

    @property
    def broker_host(self) -> str:
        return self.broker_addresses[0].host

    @property
    def broker_port(self) -> int:
        return self.broker_addresses[0].port

    @property
    def broker_tls(self) -> bool:
        return self.broker_addresses[0].tls

    def artifact_url(self, sha256: str) -> str:
        return f"{self.controller_url.rstrip('/')}/artifacts/sha256/{sha256}"


def load_config(config_file: Path | None, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read the TOML file (if any), then apply the environment."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            values.update(tomllib.loads(config_file.read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"cannot read {config_file}: {exc}") from exc
        base = config_file.resolve().parent
        for key in ("data_dir", "trust_root", "tls_ca_file", "tls_cert_file", "tls_key_file"):
            if key in values and not Path(values[key]).is_absolute():
                values[key] = base / values[key]
    for name in AgentConfig.model_fields:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = env[key]
    try:
        return AgentConfig(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigurationError(f"invalid agent settings: {problems}") from exc
