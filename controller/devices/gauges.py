"""Prometheus gauges for the fleet and its rollouts, read from the database at scrape time.

Counting at scrape time keeps every replica's ``/metrics`` true for the whole fleet (the
database is the truth), with no state to keep in step. Each scrape runs a few grouped
queries; a failed query skips its gauges and is logged, never failing the scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from ..rollouts.tables import RolloutAssignmentRecord, RolloutRecord
from .tables import DeviceModelRecord, DeviceRecord

__all__ = ["FleetCollector"]

logger = logging.getLogger(__name__)


class FleetCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        try:
            with Session(self.engine) as session:
                yield from self._devices(session)
                yield from self._rollouts(session)
        except SQLAlchemyError as exc:
            logger.warning("fleet metrics skipped: %s", exc)

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
                col(RolloutRecord.status).in_(("pending", "running", "soaking", "paused"))
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
