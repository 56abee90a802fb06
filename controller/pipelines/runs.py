"""Channels and their pipelines: a version pushed or imported into a channel ships by policy.

A pipeline walks its steps in order; each step either finishes now, waits (for a job, an
approval, a rollout) and is looked at again by the next ``advance_pipelines``, or stops
the pipeline with its reason:

1. ``variants``: the channel's variant modes in order, each a ``variant`` job; the first
   the quality gate accepts is the candidate. Every mode rejected stops the pipeline. A
   channel with no variants offers the version itself.
2. ``quality_gate``: an ``evaluate`` job compares the candidate with the model's release
   the channel last shipped, on the candidate's validation set. Non-finite outputs, or an
   accuracy drop over the controller's ``max_accuracy_drop_points``, stop the pipeline.
   The first release through a channel has nothing to compare with and passes, saying so.
3. ``approval``: with ``approval_required`` the pipeline waits (``waiting_approval``, a
   ``release_waiting_approval`` webhook) until an operator approves it.
4. ``release``: a ``release`` job signs the candidate, with the approval and the channel
   in its provenance.
5. ``rollout``: a rollout with the channel's policy and selector. It waits while another
   rollout of the model is unfinished. The pipeline ends ``completed`` when the rollout
   completes and ``stopped`` when it is aborted; a paused rollout is reported
   (``pipeline_stopped``) and followed on, since an operator may resume it.

Invariants: a channel runs one pipeline at a time (oldest queued first); a newer version
of the same model supersedes a pipeline that has not started its rollout; a pipeline is
advanced under its row lock (``FOR UPDATE SKIP LOCKED``), so two replicas never take the
same step twice; every step's outcome is appended to ``history``.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from protocol import ProbationPolicy

from ..db import session_scope
from ..devices.selectors import parse_selector
from ..errors import BadRequestError, ConflictError, ControllerError, NotFoundError
from ..registry.models import get_version
from ..registry.tables import ReleaseRecord
from ..rollouts.codec import decode_policy, decode_probation, encode_policy
from ..rollouts.core import RolloutPolicy
from ..rollouts.records import create_rollout
from ..rollouts.tables import RolloutEventRecord, RolloutRecord
from ..tables import utcnow
from .jobs import enqueue_job
from .tables import ChannelRecord, JobRecord, PipelineRecord

__all__ = [
    "ACTIVE_STATUSES",
    "advance_pipelines",
    "approve_pipeline",
    "create_channel",
    "get_channel",
    "list_channels",
    "set_channel_paused",
    "start_pipeline",
]

logger = logging.getLogger(__name__)

# A channel's one pipeline in progress is in one of these.
ACTIVE_STATUSES = ("running", "waiting_approval", "rolling_out")
# Not started or not yet rolling out: a newer version of the model replaces it.
SUPERSEDABLE_STATUSES = ("queued", "running", "waiting_approval")
FINISHED_STATUSES = ("completed", "stopped", "superseded")
MAX_SELECTOR_CHARS = 512  # the channels.selector column
# A completed pipeline's step is "done"; it is never advanced (it is not active).
STEPS = ("variants", "quality_gate", "approval", "release", "rollout", "done")


def create_channel(
    session: Session,
    *,
    name: str,
    selector: str,
    variants: list[str],
    policy: RolloutPolicy,
    probation: ProbationPolicy,
    capture: dict[str, Any] | None,
    approval_required: bool,
    actor: str,
) -> ChannelRecord:
    if session.get(ChannelRecord, name) is not None:
        raise ConflictError(f"channel {name!r} exists already")
    canonical = str(parse_selector(selector))  # a bad selector: 400 now, not at its rollout
    if len(canonical) > MAX_SELECTOR_CHARS:
        raise BadRequestError(f"the selector is over {MAX_SELECTOR_CHARS} characters")
    channel = ChannelRecord(
        name=name,
        selector=canonical,
        variants=variants,
        policy={**encode_policy(policy, probation), "capture": capture},
        approval_required=approval_required,
        created_by=actor,
    )
    session.add(channel)
    session.flush()
    return channel


def get_channel(session: Session, name: str) -> ChannelRecord:
    channel = session.get(ChannelRecord, name)
    if channel is None:
        raise NotFoundError(f"no channel {name!r}")
    return channel


def list_channels(session: Session) -> list[ChannelRecord]:
    return list(session.exec(select(ChannelRecord).order_by(col(ChannelRecord.name))).all())


def channel_pipelines(session: Session, name: str, *, limit: int = 50) -> list[PipelineRecord]:
    return list(
        session.exec(
            select(PipelineRecord)
            .where(PipelineRecord.channel == name)
            .order_by(col(PipelineRecord.created_at).desc(), col(PipelineRecord.id))
            .limit(limit)
        ).all()
    )


def get_pipeline(session: Session, pipeline_id: str) -> PipelineRecord:
    pipeline = session.get(PipelineRecord, pipeline_id)
    if pipeline is None:
        raise NotFoundError(f"no pipeline {pipeline_id!r}")
    return pipeline


def set_channel_paused(session: Session, name: str, *, paused: bool) -> ChannelRecord:
    """A paused channel starts no pipeline and takes no further step; a rollout it
    started goes on (pause the rollout itself to stop that)."""
    channel = get_channel(session, name)
    channel.paused = paused
    session.add(channel)
    return channel


def start_pipeline(
    session: Session, *, channel: str, model: str, version: int, actor: str
) -> PipelineRecord:
    """Queue ``model:version`` into ``channel``; it supersedes the model's pipeline there
    that has not reached its rollout yet."""
    target = get_channel(session, channel)
    get_version(session, model, version)  # NotFoundError for an unknown version
    now = utcnow()
    for older in session.exec(
        select(PipelineRecord).where(
            PipelineRecord.channel == target.name,
            PipelineRecord.model_name == model,
            col(PipelineRecord.status).in_(SUPERSEDABLE_STATUSES),
        )
    ).all():
        _finish(older, "superseded", f"superseded by {model}:{version}", now)
        session.add(older)
    pipeline = PipelineRecord(
        id=f"pl-{secrets.token_hex(6)}",
        channel=target.name,
        model_name=model,
        source_version=version,
        status="queued",
        step="variants",
        created_by=actor,
        history=[_entry("queued", "ok", f"{model}:{version} by {actor}", now)],
    )
    session.add(pipeline)
    session.flush()
    return pipeline


def approve_pipeline(session: Session, pipeline_id: str, *, actor: str) -> PipelineRecord:
    pipeline = get_pipeline(session, pipeline_id)
    if pipeline.status != "waiting_approval":
        raise ConflictError(
            f"pipeline {pipeline_id} is {pipeline.status}, not waiting for an approval"
        )
    now = utcnow()
    pipeline.approved_by, pipeline.approved_at = actor, now
    pipeline.status, pipeline.step = "running", "release"
    _log(pipeline, "approval", "ok", f"approved by {actor}", now)
    session.add(pipeline)
    return pipeline


def waiting_pipeline(session: Session, channel: str) -> PipelineRecord:
    """The channel's pipeline waiting for an approval."""
    found = session.exec(
        select(PipelineRecord).where(
            PipelineRecord.channel == channel, PipelineRecord.status == "waiting_approval"
        )
    ).first()
    if found is None:
        raise ConflictError(f"no pipeline of channel {channel!r} waits for an approval")
    return found


@dataclass
class _Step:
    """What a step runner works on."""

    session: Session
    channel: ChannelRecord
    pipeline: PipelineRecord
    now: datetime
    max_accuracy_drop_points: float


def advance_pipelines(
    engine: Engine, *, max_accuracy_drop_points: float, now: datetime | None = None
) -> int:
    """Start and advance each channel's pipeline by as many steps as are ready; returns
    how many steps were taken."""
    with session_scope(engine) as session:
        names = [c.name for c in list_channels(session) if not c.paused]
    taken = 0
    for name in names:
        try:
            with session_scope(engine) as session:
                taken += _advance_channel(session, name, now or utcnow(), max_accuracy_drop_points)
        except ControllerError as exc:
            _stop_active(engine, name, f"{type(exc).__name__}: {exc}")
        except Exception:  # one channel's bug must not hold every channel after it
            logger.exception("channel %s: advancing its pipeline failed", name)
    return taken


def _stop_active(engine: Engine, channel: str, reason: str) -> None:
    """Stop the channel's active pipeline with a refusal its step raised (a selector the
    rollout refuses, a release that cannot be signed), so it never retries for ever."""
    with session_scope(engine) as session:
        pipeline = session.exec(
            select(PipelineRecord).where(
                PipelineRecord.channel == channel,
                col(PipelineRecord.status).in_(ACTIVE_STATUSES),
            )
        ).first()
        if pipeline is not None:
            _stop(session, pipeline, f"{pipeline.step}: {reason}", utcnow())
            session.add(pipeline)


def _advance_channel(
    session: Session, name: str, now: datetime, max_accuracy_drop_points: float
) -> int:
    channel = session.get(ChannelRecord, name, with_for_update=True)
    if channel is None or channel.paused:
        return 0
    pipeline = session.exec(
        select(PipelineRecord)
        .where(PipelineRecord.channel == name, col(PipelineRecord.status).in_(ACTIVE_STATUSES))
        .with_for_update(skip_locked=True)
    ).first()
    if pipeline is None:
        pipeline = session.exec(
            select(PipelineRecord)
            .where(PipelineRecord.channel == name, PipelineRecord.status == "queued")
            .order_by(col(PipelineRecord.created_at), col(PipelineRecord.id))
            .with_for_update(skip_locked=True)
        ).first()
        if pipeline is None:
            return 0
        pipeline.status = "running"
        _log(pipeline, "start", "ok", f"started in channel {name}", now)
    taken = 0
    # Each step that finishes at once lets the next one go; at most one lap of the steps.
    for _ in STEPS:
        before = (pipeline.step, pipeline.status, pipeline.job_id)
        _STEP_RUNNERS[pipeline.step](
            _Step(session, channel, pipeline, now, max_accuracy_drop_points)
        )
        if (pipeline.step, pipeline.status, pipeline.job_id) == before:
            break
        taken += 1
        if pipeline.status in FINISHED_STATUSES or pipeline.job_id is not None:
            break
    pipeline.updated_at = now
    session.add(pipeline)
    return taken


# -- steps -------------------------------------------------------------------------


def _step_variants(step: _Step) -> None:
    session, channel, pipeline, now = step.session, step.channel, step.pipeline, step.now
    if not channel.variants:
        pipeline.release_version, pipeline.step = pipeline.source_version, "quality_gate"
        _log(pipeline, "variants", "ok", "no variants: the version itself is the candidate", now)
        return
    tried = [e for e in pipeline.history if e["step"] == "variants" and e.get("mode")]
    if pipeline.job_id is None:
        mode = channel.variants[len(tried)]
        _wait_for(session, pipeline, "variant", _variant_args(pipeline, mode), now)
        return
    job = _finished_job(session, pipeline)
    if job is None:
        return
    mode = str(job.args["mode"])
    pipeline.job_id = None
    if job.status == "failed":
        _stop(session, pipeline, f"variant {mode}: {job.error}", now, step="variants")
        return
    result = job.result or {}
    detail = f"{pipeline.model_name}:{result.get('version')} {result.get('status')}"
    if result.get("status") == "accepted":
        _log(pipeline, "variants", "ok", detail, now, mode=mode)
        pipeline.release_version, pipeline.step = int(result["version"]), "quality_gate"
        return
    reasons = "; ".join(result.get("reasons", [])) or "see its report"
    _log(pipeline, "variants", "rejected", f"{detail}: {reasons}", now, mode=mode)
    if len(tried) + 1 >= len(channel.variants):
        _stop(session, pipeline, f"quality gate: variant {mode} rejected ({reasons})", now)


def _variant_args(pipeline: PipelineRecord, mode: str) -> dict[str, Any]:
    return {"model": pipeline.model_name, "version": pipeline.source_version, "mode": mode}


def _step_quality_gate(step: _Step) -> None:
    session, channel, pipeline, now = step.session, step.channel, step.pipeline, step.now
    candidate = pipeline.release_version or pipeline.source_version
    if pipeline.job_id is None:
        baseline = _shipped_release(session, channel.name, pipeline.model_name)
        if baseline is None or baseline.version == candidate:
            note = "first release through this channel: nothing to compare with"
            _log(pipeline, "quality_gate", "ok", note, now)
            pipeline.step = "approval"
            return
        args = {"model": pipeline.model_name, "baseline": baseline.version, "candidate": candidate}
        _wait_for(session, pipeline, "evaluate", args, now)
        return
    job = _finished_job(session, pipeline)
    if job is None:
        return
    pipeline.job_id = None
    baseline_ref = f"{pipeline.model_name}:{job.args['baseline']}"
    if job.status == "failed":
        _stop(session, pipeline, f"quality gate against {baseline_ref}: {job.error}", now)
        return
    report = job.result or {}
    limit = step.max_accuracy_drop_points
    failure = _quality_failure(report, limit)
    if failure is not None:
        _stop(session, pipeline, f"quality gate against {baseline_ref}: {failure}", now)
        return
    _log(pipeline, "quality_gate", "ok", f"against {baseline_ref}: {_summary(report)}", now)
    pipeline.step = "approval"


def _quality_failure(report: dict[str, Any], max_drop_points: float) -> str | None:
    if report.get("nonfinite_outputs"):
        return f"{report['nonfinite_outputs']} output values are NaN or infinite"
    drop = report.get("accuracy_drop_points")
    if drop is not None and drop > max_drop_points:
        return (
            f"accuracy drops {drop:.2f} points ({report.get('accuracy_parent'):.4f} -> "
            f"{report.get('accuracy_candidate'):.4f}), more than {max_drop_points:g}"
        )
    return None


def _summary(report: dict[str, Any]) -> str:
    if report.get("accuracy_candidate") is None:
        return "no labels: accuracy not compared; outputs finite"
    return (
        f"accuracy {report['accuracy_parent']:.4f} -> {report['accuracy_candidate']:.4f} "
        f"on {report.get('samples')} samples"
    )


def _shipped_release(session: Session, channel: str, model: str) -> ReleaseRecord | None:
    """The release of ``model`` this channel last rolled out to the end."""
    shipped = session.exec(
        select(PipelineRecord)
        .where(
            PipelineRecord.channel == channel,
            PipelineRecord.model_name == model,
            PipelineRecord.status == "completed",
        )
        .order_by(col(PipelineRecord.updated_at).desc())
    ).first()
    if shipped is None or shipped.release_version is None:
        return None
    return session.exec(
        select(ReleaseRecord).where(
            ReleaseRecord.model_name == model, ReleaseRecord.version == shipped.release_version
        )
    ).first()


def _step_approval(step: _Step) -> None:
    session, channel, pipeline, now = step.session, step.channel, step.pipeline, step.now
    if not channel.approval_required or pipeline.approved_by is not None:
        pipeline.step = "release"
        return
    if pipeline.status == "waiting_approval":
        return
    pipeline.status = "waiting_approval"
    candidate = f"{pipeline.model_name}:{pipeline.release_version}"
    _log(pipeline, "approval", "waiting", f"{candidate} waits for an operator's approval", now)
    _event(session, "release_waiting_approval", pipeline, now)


def _step_release(step: _Step) -> None:
    session, channel, pipeline, now = step.session, step.channel, step.pipeline, step.now
    if pipeline.job_id is None:
        args: dict[str, Any] = {
            "model": pipeline.model_name,
            "version": pipeline.release_version,
            "channel": channel.name,
            "pipeline": pipeline.id,
            "approved_by": pipeline.approved_by,
            "approved_at": None
            if pipeline.approved_at is None
            else pipeline.approved_at.isoformat(),
        }
        _wait_for(session, pipeline, "release", args, now)
        return
    job = _finished_job(session, pipeline)
    if job is None:
        return
    pipeline.job_id = None
    if job.status == "failed":
        _stop(session, pipeline, f"release: {job.error}", now)
        return
    _log(pipeline, "release", "ok", f"signed {pipeline.model_name}:{pipeline.release_version}", now)
    pipeline.step = "rollout"


def _step_rollout(step: _Step) -> None:
    session, channel, pipeline, now = step.session, step.channel, step.pipeline, step.now
    if pipeline.rollout_id is None:
        _start_rollout(session, channel, pipeline, now)
        return
    rollout = session.get(RolloutRecord, pipeline.rollout_id)
    if rollout is None:
        _stop(session, pipeline, f"rollout {pipeline.rollout_id} is gone", now)
        return
    if rollout.status == "completed":
        _log(pipeline, "rollout", "ok", f"rollout {rollout.id} completed", now)
        _finish(pipeline, "completed", None, now)
    elif rollout.status == "aborted":
        _stop(session, pipeline, f"rollout {rollout.id} aborted: {_rollout_reason(rollout)}", now)
    elif rollout.status == "superseded":
        # Only a completed rollout is superseded (by a newer one of the model): it shipped.
        _log(pipeline, "rollout", "ok", f"rollout {rollout.id} completed, since superseded", now)
        _finish(pipeline, "completed", None, now)
    elif rollout.status == "paused" and pipeline.reason is None:
        reason = f"rollout {rollout.id} paused: {_rollout_reason(rollout)}"
        pipeline.reason = reason
        _log(pipeline, "rollout", "paused", reason, now)
        _event(session, "pipeline_stopped", pipeline, now)
    elif rollout.status != "paused" and pipeline.reason is not None:
        pipeline.reason = None  # resumed by an operator
        _log(pipeline, "rollout", "resumed", f"rollout {rollout.id} is {rollout.status}", now)


def _start_rollout(
    session: Session, channel: ChannelRecord, pipeline: PipelineRecord, now: datetime
) -> None:
    from ..monitoring.schemas import AlertCapture

    capture = channel.policy.get("capture")
    try:
        with session.begin_nested():
            rollout = create_rollout(
                session,
                model=pipeline.model_name,
                version=pipeline.release_version or pipeline.source_version,
                selector=channel.selector,
                policy=decode_policy(channel.policy),
                probation=decode_probation(channel.policy),
                actor=f"pipeline {pipeline.id}",
                capture=None if capture is None else AlertCapture.model_validate(capture),
            )
    except ConflictError as exc:
        # Another rollout of the model is unfinished: wait for it, saying so once.
        if not pipeline.history or pipeline.history[-1].get("detail") != str(exc):
            _log(pipeline, "rollout", "waiting", str(exc), now)
        return
    pipeline.rollout_id, pipeline.status = rollout.id, "rolling_out"
    _log(
        pipeline, "rollout", "started", f"rollout {rollout.id} to {channel.selector or 'all'}", now
    )


def _rollout_reason(rollout: RolloutRecord) -> str:
    """The failed gates of the rollout's last judgement, or its last note."""
    judgements = rollout.state.get("judgements", [])
    for judgement in reversed(judgements):
        failed = [g for g in judgement.get("gates", []) if not g.get("passed", True)]
        if failed:
            wave = judgement.get("wave")
            where = "shadow stage" if wave == -1 else f"wave {wave}"
            gates = "; ".join(
                f"{g['name']} {g.get('value')} over {g.get('threshold')} ({g.get('note', '')})"
                for g in failed
            )
            return f"{where} failed: {gates}"
    return rollout.notes[-1] if rollout.notes else "see the rollout"


_STEP_RUNNERS = {
    "variants": _step_variants,
    "quality_gate": _step_quality_gate,
    "approval": _step_approval,
    "release": _step_release,
    "rollout": _step_rollout,
}


# -- helpers -----------------------------------------------------------------------


def _wait_for(
    session: Session, pipeline: PipelineRecord, kind: str, args: dict[str, Any], now: datetime
) -> None:
    job = enqueue_job(session, kind, args, actor=f"pipeline {pipeline.id}")
    pipeline.job_id = job.id
    _log(pipeline, pipeline.step, "job", f"{kind} job {job.id} queued", now)


def _finished_job(session: Session, pipeline: PipelineRecord) -> JobRecord | None:
    job = session.get(JobRecord, pipeline.job_id)
    if job is None:
        pipeline.job_id = None  # gone: the step queues it again
        return None
    return job if job.status in ("succeeded", "failed") else None


def _stop(
    session: Session, pipeline: PipelineRecord, reason: str, now: datetime, *, step: str = ""
) -> None:
    _log(pipeline, step or pipeline.step, "stopped", reason, now)
    _finish(pipeline, "stopped", reason, now)
    _event(session, "pipeline_stopped", pipeline, now)
    logger.warning("pipeline %s (%s) stopped: %s", pipeline.id, pipeline.channel, reason)


def _finish(pipeline: PipelineRecord, status: str, reason: str | None, now: datetime) -> None:
    pipeline.status, pipeline.reason, pipeline.job_id = status, reason, None
    if status == "completed":
        pipeline.step = "done"
    if status == "superseded":
        _log(pipeline, pipeline.step, "superseded", reason or "", now)
    pipeline.updated_at = now


def _log(
    pipeline: PipelineRecord, step: str, status: str, detail: str, now: datetime, **extra: Any
) -> None:
    # A new list, so the JSON column sees the change.
    pipeline.history = [*pipeline.history, _entry(step, status, detail, now, **extra)]


def _entry(step: str, status: str, detail: str, now: datetime, **extra: Any) -> dict[str, Any]:
    return {"step": step, "status": status, "at": now.isoformat(), "detail": detail, **extra}


def _event(session: Session, kind: str, pipeline: PipelineRecord, now: datetime) -> None:
    session.add(
        RolloutEventRecord(
            rollout_id=pipeline.rollout_id,
            kind=kind,
            at=now,
            details={
                "pipeline": pipeline.id,
                "channel": pipeline.channel,
                "model": pipeline.model_name,
                "version": pipeline.source_version,
                "release_version": pipeline.release_version,
                "reason": pipeline.reason,
                "step": pipeline.step,
            },
        )
    )
