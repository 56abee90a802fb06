"""Controller settings: defaults, then a TOML file, then ``EDGEFLEET_*`` environment variables.

Every setting has an environment variable named ``EDGEFLEET_`` + its upper-case name
(``EDGEFLEET_DATA_DIR``, ``EDGEFLEET_DATABASE_URL``, ``EDGEFLEET_MAX_UPLOAD_BYTES``…); a
TOML file given by ``EDGEFLEET_CONFIG`` (or ``--config``) holds the same names in lower
case. Command-line flags, applied by the CLI, win over both.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

__all__ = ["DEFAULT_CONTROLLER_MQTT_USERNAME", "ENV_PREFIX", "Settings", "load_settings"]

ENV_PREFIX = "EDGEFLEET_"
_MIB = 1024 * 1024
DEFAULT_CONTROLLER_MQTT_USERNAME = "edgefleet-controller"


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
    # TLS (docs/security.md): HTTPS for the API and dashboard, a TLS listener on
    # mqtts_port for devices (the plain one then listens on loopback for the controller
    # only) and a client certificate for every device enrolled. Needs `edgefleet ca init`.
    tls: bool = False
    mqtts_port: int = Field(default=8883, ge=0, le=65535)
    # Names devices reach the controller and the broker by, put in the server certificate;
    # empty: the hosts of public_url and public_broker_url, mqtt_host, host and localhost.
    tls_hosts: list[str] = []
    # Off: a device must log in with its certificate; its MQTT password is refused.
    device_password_login: bool = True

    max_upload_bytes: int = Field(default=512 * _MIB, gt=0)
    # "offline": the release key stays on another machine; releases are prepared here,
    # signed there (edgefleet release sign) and uploaded (docs/security.md).
    release_key: Literal["online", "offline"] = "online"
    max_validation_bytes: int = Field(default=256 * _MIB, gt=0)
    # HTTP request limits (controller.api.limits): the largest body of any route but the
    # model upload; a body must arrive within request_body_timeout_s plus one second per
    # min_request_body_bytes_per_s received; request headers within request_header_timeout_s.
    max_request_bytes: int = Field(default=1 * _MIB, gt=0)
    request_body_timeout_s: float = Field(default=10.0, gt=0)
    min_request_body_bytes_per_s: int = Field(default=16 * 1024, gt=0)
    request_header_timeout_s: float = Field(default=10.0, gt=0)
    # Limits for converter jobs (inspection, quantization, profiling).
    job_memory_bytes: int = Field(default=4096 * _MIB, gt=0)
    job_cpu_s: int = Field(default=600, gt=0)
    job_wall_s: float = Field(default=900.0, gt=0)
    max_tensor_bytes: int = Field(default=1024 * _MIB, gt=0)
    # Captured samples (controller.samples): the largest one upload may be, and what one
    # device may hold here in all (beyond it, 507 until samples are deleted).
    max_sample_bytes: int = Field(default=8 * _MIB, gt=0)
    sample_quota_bytes_per_device: int = Field(default=256 * _MIB, gt=0)
    sample_quota_per_device: int = Field(default=10_000, gt=0)

    # The quality gate for variants.
    max_accuracy_drop_points: float = Field(default=1.0, ge=0)
    min_top1_agreement: float = Field(default=0.99, ge=0, le=1)
    # A variant slower than this times its parent on the controller's CPU is rejected.
    max_latency_ratio: float = Field(default=1.10, gt=0)
    golden_count: int = Field(default=4, ge=1, le=64)

    # The fleet: what enrolled devices are told, and how the controller reaches the broker.
    # Empty public URLs mean "what this controller listens on".
    public_url: str = ""
    public_broker_url: str = ""
    mqtt_username: str = ""
    mqtt_password: str = ""
    # Names this controller's MQTT session (persistent, so device messages wait for it
    # across a restart); replicas need distinct ids. Empty means the host name.
    controller_id: str = ""
    # Read device topics as an MQTT v5 shared subscription of this group (replicas);
    # empty reads them directly. The embedded amqtt broker does not implement them.
    shared_subscription_group: str = ""
    # A NATS cluster as the broker (docs/operations.md, "Scaling out"). With nats_url
    # (nats://host:4222, or the nodes' URLs separated by commas) every replica reads device
    # reports from the JetStream stream nats_stream through the durable consumer
    # nats_consumer, which splits them between replicas and keeps them while every
    # controller is down (up to nats_max_age_s and nats_max_bytes); broker is then the
    # nodes' MQTT listener (mqtt://n1:1883,mqtt://n2:1883), used only to publish.
    nats_url: str = ""
    nats_stream: str = "EDGEFLEET_REPORTS"
    nats_consumer: str = "edgefleet-controllers"
    # Copies of the stream kept by the cluster; 0: 3 on a cluster, 1 on a single server.
    nats_replicas: int = Field(default=0, ge=0, le=5)
    nats_max_age_s: float = Field(default=7 * 86400.0, gt=0)
    nats_max_bytes: int = Field(default=1024 * _MIB, gt=0)
    # serve runs the MQTT bridge, the rollout loop and the reconciler unless this is off.
    fleet_enabled: bool = True
    plan_interval_s: float = Field(default=1.0, gt=0)
    reconcile_interval_s: float = Field(default=30.0, gt=0)
    # Deployments expire after this; the reconciler signs a fresh one at half of it.
    deployment_ttl_s: float = Field(default=7 * 86400.0, ge=60)
    enrollment_token_ttl_s: float = Field(default=86400.0, gt=0)
    # Telemetry: rows are written in batches; old windows are merged, then deleted.
    ingest_batch_size: int = Field(default=500, ge=1)
    ingest_flush_s: float = Field(default=0.2, gt=0)
    telemetry_downsample_after_s: float = Field(default=86400.0, gt=0)
    telemetry_downsample_s: float = Field(default=300.0, gt=0)
    telemetry_retention_s: float = Field(default=30 * 86400.0, gt=0)
    # Webhooks for rollout paused, aborted, completed and device rolled back; the body is
    # signed with HMAC-SHA256 of webhook_secret when set.
    webhook_urls: list[str] = []
    webhook_secret: str = ""
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_max_attempts: int = Field(default=8, ge=1)
    # How often alert rules are evaluated (controller.monitoring.alerts).
    alert_interval_s: float = Field(default=30.0, gt=0)
    # Static HTTP servers that hold `edgefleet artifacts export`'s layout: deployments name
    # them and devices try them in order before this controller (docs/artifact-mirrors.md).
    artifact_mirrors: list[str] = Field(default=[], max_length=8)

    @field_validator("artifact_mirrors", mode="before")
    @classmethod
    def _mirror_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [url.strip() for url in value.split(",") if url.strip()]
        return value

    @field_validator("artifact_mirrors")
    @classmethod
    def _mirror_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r}: an artifact mirror is an http(s) base URL")
            if parts.query or parts.fragment or parts.username or parts.password:
                raise ValueError(f"{url!r}: no query, fragment or credentials in a mirror URL")
        return [url.rstrip("/") for url in value]

    @field_validator("webhook_urls", "tls_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [url.strip() for url in value.split(",") if url.strip()]
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'edgefleet.db').resolve()}"

    @property
    def broker_url(self) -> str:
        """Where the controller's own MQTT client connects (with TLS on, the embedded
        broker's plain listener is on loopback, for this client only)."""
        if self.broker == "embedded":
            host = "127.0.0.1" if self.tls else self.mqtt_host
            return f"mqtt://{host}:{self.mqtt_port}"
        return self.broker

    @property
    def embedded_device_broker_url(self) -> str:
        if self.tls:
            return f"mqtts://{self.mqtt_host}:{self.mqtts_port}"
        return f"mqtt://{self.mqtt_host}:{self.mqtt_port}"

    @property
    def controller_mqtt_username(self) -> str:
        """The controller's MQTT login name (``controller.devices.broker_auth``)."""
        return self.mqtt_username or DEFAULT_CONTROLLER_MQTT_USERNAME

    @property
    def mqtt_client_id(self) -> str:
        return f"edgefleet-controller-{self.controller_id or socket.gethostname()}"

    @property
    def device_broker_url(self) -> str:
        if self.public_broker_url:
            return self.public_broker_url
        return self.embedded_device_broker_url if self.broker == "embedded" else self.broker

    @property
    def device_controller_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return self.public_url or f"{scheme}://{self.host}:{self.port}"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def server_tls_hosts(self) -> list[str]:
        """The names the server certificate must carry."""
        if self.tls_hosts:
            return list(self.tls_hosts)
        hosts = [urlsplit(url).hostname for url in (self.public_url, self.public_broker_url)]
        hosts += [self.mqtt_host, self.host, "localhost", "127.0.0.1"]
        wildcard = {"0.0.0.0", "::", ""}  # noqa: S104 - names to leave out, not binds
        return list(dict.fromkeys(h for h in hosts if h and h not in wildcard))

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def work_dir(self) -> Path:
        return self.data_dir / "work"

    @property
    def samples_dir(self) -> Path:
        return self.data_dir / "samples"


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
