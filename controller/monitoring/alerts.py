"""Alert rules evaluated on each release's pooled fleet health; episodes become webhooks.

``evaluate_alerts`` runs in the fleet service every ``alert_interval_s``. For every rule
and every release of its model that sent telemetry within the rule's window, it reads the
release's health over the whole fleet (``rollouts.health.fleet_health``, pooled as the
rollout gates pool it) and judges it (``rules.judge``):

- degraded with no open episode: an episode opens and a ``model_degraded`` event is
  queued for the webhooks, with the evidence (the figures, the devices, the release);
- not degraded (with enough data) while an episode is open: it closes, and a
  ``model_recovered`` event is queued; so is one for a release that sent nothing for a
  whole window (it no longer serves: nothing is left to recover);
- not enough data: nothing changes.

Each rule is evaluated under its row lock (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so
controller replicas never open the same episode twice.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from ..db import session_scope
from ..devices.desired import DeploymentSigner
from ..devices.tables import telemetry_table
from ..errors import BadRequestError, NotFoundError
from ..mqtt.telemetry import to_utc
from ..rollouts.core import FleetHealth
from ..rollouts.health import fleet_health
from ..rollouts.references import release_reference_profile
from ..rollouts.tables import RolloutEventRecord
from ..samples.capture import active_captures, order_capture, samples_link
from ..tables import utcnow
from .rules import METRICS, Judgement, judge
from .tables import AlertEpisode, AlertRule

__all__ = [
    "EVIDENCE_DEVICES",
    "create_rule",
    "delete_rule",
    "evaluate_alerts",
]

logger = logging.getLogger(__name__)

# Devices named in an event's evidence at most (the count is always given).
EVIDENCE_DEVICES = 100
_T = telemetry_table


def create_rule(
    session: Session,
    *,
    model: str,
    metric: str,
    threshold: float,
    window_s: float,
    min_devices: int,
    min_requests: int,
    actor: str,
    capture: dict[str, Any] | None = None,
) -> AlertRule:
    if metric not in METRICS:
        raise BadRequestError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
    rule = AlertRule(
        id=f"ar-{secrets.token_hex(6)}",
        model_name=model,
        metric=metric,
        threshold=threshold,
        window_s=window_s,
        min_devices=min_devices,
        min_requests=min_requests,
        created_by=actor,
        capture=capture,
    )
    session.add(rule)
    session.flush()
    return rule


def delete_rule(session: Session, rule_id: str) -> None:
    """Delete a rule and close its open episodes (no webhook: nobody asks any more)."""
    rule = session.get(AlertRule, rule_id)
    if rule is None:
        raise NotFoundError(f"no alert rule {rule_id!r}")
    for episode in _open_episodes(session, rule_id).values():
        episode.ended_at = utcnow()
        session.add(episode)
    session.delete(rule)
    session.flush()


def evaluate_alerts(
    engine: Engine,
    artifacts_dir: Path,
    *,
    now: datetime,
    signer: DeploymentSigner | None = None,
) -> list[str]:
    """Evaluate every rule once; returns the kinds of the events queued.

    ``signer`` signs the capture orders of rules that capture samples when they fire
    (without one, such a rule fires without turning capture on)."""
    with Session(engine) as session:
        rule_ids = list(session.exec(select(AlertRule.id).order_by(col(AlertRule.id))))
    queued: list[str] = []
    for rule_id in rule_ids:
        try:
            queued += _evaluate_rule(engine, artifacts_dir, rule_id, now=now, signer=signer)
        except Exception:
            # One broken rule (a release without a readable profile...) must not stop the rest.
            logger.exception("alert rule %s could not be evaluated", rule_id)
    return queued


@dataclass(frozen=True)
class _Measured:
    version: int
    judgement: Judgement | None  # None: the release sent nothing within the window
    evidence: dict[str, Any] | None = None


def _evaluate_rule(
    engine: Engine,
    artifacts_dir: Path,
    rule_id: str,
    *,
    now: datetime,
    signer: DeploymentSigner | None = None,
) -> list[str]:
    # Measured first, outside the rule's lock and any transaction: on SQLite a transaction
    # holds the only write lock, which the health queries' connection would wait for.
    with Session(engine) as session:
        rule = session.get(AlertRule, rule_id)
        if rule is None:
            return []
        session.expunge(rule)
        since = now - timedelta(seconds=rule.window_s)
        serving = _versions_serving(session, rule.model_name, since)
        versions = serving | set(_open_episodes(session, rule_id))
    measured = [
        _measure(engine, artifacts_dir, rule, version, since)
        if version in serving
        else _Measured(version, None)
        for version in versions
    ]
    with session_scope(engine) as session:
        rule = session.exec(
            select(AlertRule).where(AlertRule.id == rule_id).with_for_update(skip_locked=True)
        ).first()
        if rule is None:  # deleted, or another controller holds it now
            return []
        open_episodes = _open_episodes(session, rule_id)
        queued = []
        for each in sorted(measured, key=lambda m: m.version):
            episode = open_episodes.get(each.version)
            judgement = each.judgement
            if judgement is None:
                if episode is not None:
                    queued.append(
                        _close(session, rule, episode, now, value=None, reason="no telemetry")
                    )
            elif judgement.degraded and episode is None:
                assert each.evidence is not None
                queued.append(
                    _open(session, rule, each.version, now, judgement.value, each.evidence)
                )
                if rule.capture is not None and signer is not None:
                    _capture_on_firing(session, signer, rule, each.evidence, now)
            elif judgement.degraded is False and episode is not None:
                queued.append(
                    _close(
                        session, rule, episode, now, value=judgement.value, reason=judgement.note
                    )
                )
            elif episode is not None and judgement.value is not None:
                episode.last_value = judgement.value
                session.add(episode)
        rule.last_evaluated_at = now
        session.add(rule)
        return queued


def _open_episodes(session: Session, rule_id: str) -> dict[int, AlertEpisode]:
    return {
        episode.version: episode
        for episode in session.exec(
            select(AlertEpisode).where(
                AlertEpisode.rule_id == rule_id, col(AlertEpisode.ended_at).is_(None)
            )
        )
    }


def _measure(
    engine: Engine, artifacts_dir: Path, rule: AlertRule, version: int, since: datetime
) -> _Measured:
    reference = release_reference_profile(
        engine, artifacts_dir, model=rule.model_name, version=version
    )
    health = fleet_health(
        engine,
        device_ids=None,
        model=rule.model_name,
        version=version,
        since=since,
        reference=reference,
        input_drift=rule.metric == "input_drift_psi",
    )
    judgement = judge(
        metric=rule.metric,
        threshold=rule.threshold,
        min_devices=rule.min_devices,
        min_requests=rule.min_requests,
        health=health,
        reference_confidence=reference.top1_confidence_mean if reference else None,
    )
    evidence = None
    if judgement.degraded:
        with Session(engine) as session:
            evidence = _evidence(session, rule, version, since, health, judgement.note)
    return _Measured(version, judgement, evidence)


def _versions_serving(session: Session, model: str, since: datetime) -> set[int]:
    rows = session.connection().execute(
        select(_T.c.version)
        .where(
            _T.c.model_name == model,
            _T.c.window_start >= to_utc(since),
            _T.c.version.is_not(None),
        )
        .distinct()
    )
    return {int(version) for (version,) in rows}


def _evidence(
    session: Session,
    rule: AlertRule,
    version: int,
    since: datetime,
    health: FleetHealth,
    note: str,
) -> dict[str, Any]:
    """What a retraining job needs to know: which release, which devices, the numbers."""
    device_rows = session.connection().execute(
        select(_T.c.device_id)
        .where(
            _T.c.model_name == rule.model_name,
            _T.c.version == version,
            _T.c.window_start >= to_utc(since),
        )
        .distinct()
        .order_by(_T.c.device_id)
    )
    devices = [device_id for (device_id,) in device_rows]
    capturing = rule.capture is not None or bool(
        active_captures(session, now=utcnow(), model=rule.model_name)
    )
    return {
        "rule": _rule_fields(rule),
        "model": rule.model_name,
        "version": version,
        "window_start": to_utc(since).isoformat(),
        "note": note,
        "health": asdict(health),
        "device_count": len(devices),
        "devices": devices[:EVIDENCE_DEVICES],
        # Where the captured samples of the model are, when capture is (or turns) on.
        "samples": samples_link(model=rule.model_name, since=since) if capturing else None,
    }


def _capture_on_firing(
    session: Session,
    signer: DeploymentSigner,
    rule: AlertRule,
    evidence: dict[str, Any],
    now: datetime,
) -> None:
    """Turn capture on, as the rule says, on the devices the evidence names."""
    assert rule.capture is not None
    policy = rule.capture
    devices = [d for d in evidence.get("devices", []) if isinstance(d, str)]
    try:
        with session.begin_nested():  # all the devices or none
            order_capture(
                session,
                signer,
                devices,
                model=rule.model_name,
                below_confidence=float(policy["below_confidence"]),
                per_hour=int(policy["per_hour"]),
                max_bytes=int(policy["max_bytes"]),
                until=now + timedelta(seconds=float(policy["for_s"])),
                source=f"alert {rule.id}",
                now=now,
            )
    except (BadRequestError, NotFoundError, KeyError, ValueError) as exc:
        logger.warning("alert %s: could not turn sample capture on: %s", rule.id, exc)


def _rule_fields(rule: AlertRule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "metric": rule.metric,
        "threshold": rule.threshold,
        "window_s": rule.window_s,
        "min_devices": rule.min_devices,
        "min_requests": rule.min_requests,
        "capture": rule.capture,
    }


def _open(
    session: Session,
    rule: AlertRule,
    version: int,
    now: datetime,
    value: float | None,
    evidence: dict[str, Any],
) -> str:
    assert value is not None
    episode = AlertEpisode(
        rule_id=rule.id,
        model_name=rule.model_name,
        version=version,
        started_at=now,
        value=value,
        last_value=value,
        evidence=evidence,
    )
    session.add(episode)
    session.flush()
    details = {**evidence, "episode_id": episode.id, "value": value}
    session.add(RolloutEventRecord(kind="model_degraded", details=details, at=now))
    logger.warning(
        "alert %s: %s:%s degraded (%s)", rule.id, rule.model_name, version, evidence["note"]
    )
    return "model_degraded"


def _close(
    session: Session,
    rule: AlertRule,
    episode: AlertEpisode,
    now: datetime,
    *,
    value: float | None,
    reason: str,
) -> str:
    episode.ended_at = now
    episode.last_value = value
    session.add(episode)
    details = {
        "rule": _rule_fields(rule),
        "model": rule.model_name,
        "version": episode.version,
        "episode_id": episode.id,
        "degraded_since": to_utc(episode.started_at).isoformat(),
        "value": value,
        "note": reason,
    }
    session.add(RolloutEventRecord(kind="model_recovered", details=details, at=now))
    logger.info("alert %s: %s:%s recovered (%s)", rule.id, rule.model_name, episode.version, reason)
    return "model_recovered"
