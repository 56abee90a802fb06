"""Prometheus gauges for the fleet and its rollouts, read from the database at scrape time.

Counting at scrape time keeps every replica's ``/metrics`` true for the whole fleet (the
database is the truth), with no state to keep in step. Each scrape runs a few grouped
queries; a failed query skips its gauges and is logged, never failing the scrape.

Model health (``edgefleet_model_*{model,version}``) is read, like the rollout gates, from
the telemetry of the last ``MODEL_HEALTH_WINDOW_S`` seconds of every device, pooled per
release (``rollouts.health.fleet_health``): requests, error and non-finite rates, p95,
mean confidence and output drift, so a Grafana alert can watch each release.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from ..rollouts.health import fleet_health
from ..rollouts.references import release_reference_profile
from ..rollouts.tables import RolloutAssignmentRecord, RolloutRecord
from .tables import DeviceModelRecord, DeviceRecord, telemetry_table

__all__ = ["MODEL_HEALTH_WINDOW_S", "FleetCollector"]

logger = logging.getLogger(__name__)


MODEL_HEALTH_WINDOW_S = 300.0
# (name suffix, help, FleetHealth attribute)
_MODEL_HEALTH = (
    ("devices", "Devices that sent telemetry", "devices"),
    ("requests", "Requests served", "requests"),
    ("error_rate", "Share of requests that failed", "error_rate"),
    ("nonfinite_rate", "Share of requests with a NaN or infinite output", "nonfinite_rate"),
    ("p95_latency_ms", "p95 latency of every request, from pooled histograms", "p95_ms"),
    ("confidence_mean", "Mean top-1 confidence", "confidence_mean"),
    (
        "output_drift_psi",
        "Worst output's PSI against the release's reference, over pooled counts",
        "max_drift_psi",
    ),
    ("label_accuracy", "Share of labeled requests classified right (feedback)", "label_accuracy"),
    (
        "input_drift_psi",
        "Worst input's PSI against the release's reference, over pooled counts (the data's)",
        "max_input_drift_psi",
    ),
)


class FleetCollector(Collector):
    def __init__(self, engine: Engine, artifacts_dir: Path | None = None) -> None:
        self.engine = engine
        # Where release check bundles are, for output drift; None: drift not reported.
        self.artifacts_dir = artifacts_dir

    def collect(self) -> Iterator[Metric]:
        try:
            with Session(self.engine) as session:
                yield from self._devices(session)
                yield from self._rollouts(session)
            yield from self._model_health()
        except SQLAlchemyError as exc:
            logger.warning("fleet metrics skipped: %s", exc)

    def _model_health(self) -> Iterator[Metric]:
        since = datetime.now(UTC) - timedelta(seconds=MODEL_HEALTH_WINDOW_S)
        families = [
            GaugeMetricFamily(
                f"edgefleet_model_{suffix}",
                f"{text} over the last {MODEL_HEALTH_WINDOW_S:.0f} s, per release.",
                labels=["model", "version"],
            )
            for suffix, text, _attribute in _MODEL_HEALTH
        ]
        with self.engine.connect() as connection:
            releases = connection.execute(
                select(telemetry_table.c.model_name, telemetry_table.c.version)
                .where(
                    telemetry_table.c.window_start >= since,
                    telemetry_table.c.version.is_not(None),
                )
                .distinct()
            ).all()
        for model, version in sorted(releases):
            reference = None
            if self.artifacts_dir is not None:
                reference = release_reference_profile(
                    self.engine, self.artifacts_dir, model=model, version=version
                )
            health = fleet_health(
                self.engine,
                device_ids=None,
                model=model,
                version=version,
                since=since,
                reference=reference,
                input_drift=True,
            )
            for family, (_suffix, _text, attribute) in zip(families, _MODEL_HEALTH, strict=True):
                value = getattr(health, attribute)
                if value is not None:
                    family.add_metric([model, str(version)], float(value))
        yield from families

    def _devices(self, session: Session) -> Iterator[Metric]:
        devices = GaugeMetricFamily(
            "edgefleet_devices", "Enrolled devices by online state.", labels=["online"]
        )
        running = GaugeMetricFamily(
            "edgefleet_devices_running",
            "Devices by the release they report running, per model (a device running two "
            "models counts once for each).",
            labels=["model", "version"],
        )
        active = col(DeviceRecord.decommissioned_at).is_(None)
        for online, count in session.exec(
            select(DeviceRecord.online, func.count())
            .where(active)
            .group_by(col(DeviceRecord.online))
        ).all():
            devices.add_metric(["true" if online else "false"], count)
        model, version = col(DeviceModelRecord.model_name), col(DeviceModelRecord.active_version)
        for model_name, model_version, count in session.exec(
            select(model, version, func.count())
            .join(DeviceRecord, col(DeviceRecord.id) == col(DeviceModelRecord.device_id))
            .where(active, version.is_not(None))
            .group_by(model, version)
        ).all():
            running.add_metric([str(model_name), str(model_version)], count)
        yield devices
        yield running

    def _rollouts(self, session: Session) -> Iterator[Metric]:
        by_status = GaugeMetricFamily(
            "edgefleet_rollouts", "Rollouts by status.", labels=["status"]
        )
        for status, count in session.exec(
            select(RolloutRecord.status, func.count()).group_by(col(RolloutRecord.status))
        ).all():
            by_status.add_metric([status], count)
        yield by_status
        live = session.exec(
            select(RolloutRecord).where(
                col(RolloutRecord.status).in_(("pending", "shadow", "running", "soaking", "paused"))
            )
        ).all()
        wave = GaugeMetricFamily(
            "edgefleet_rollout_wave", "The current wave (0 is the canary).", labels=["rollout"]
        )
        outcomes = GaugeMetricFamily(
            "edgefleet_rollout_devices",
            "Devices of an unfinished rollout by outcome.",
            labels=["rollout", "outcome"],
        )
        gates = GaugeMetricFamily(
            "edgefleet_rollout_gate_value",
            "The last judged value of each gate of an unfinished rollout.",
            labels=["rollout", "gate"],
        )
        for record in live:
            wave.add_metric([record.id], record.wave)
            for gate in record.last_gates:
                if gate.get("value") is not None:
                    gates.add_metric([record.id, gate["name"]], float(gate["value"]))
            for outcome, count in session.exec(
                select(RolloutAssignmentRecord.outcome, func.count())
                .where(RolloutAssignmentRecord.rollout_id == record.id)
                .group_by(col(RolloutAssignmentRecord.outcome))
            ).all():
                outcomes.add_metric([record.id, outcome], count)
        yield wave
        yield outcomes
        yield gates
