"""Each release's fleet health over time: the model page's charts and
``GET /api/v1/models/{name}/health``.

``model_health_series`` cuts a range (``RANGES_S``: 1h, 6h, 24h, 7d) into ``BUCKETS``
buckets and pools, per release and bucket, the telemetry windows of every device that
started in the bucket, exactly as the rollout gates, alerts and Prometheus pool a group
(``rollouts.health``): latency histograms added before the p95 is read, drift counts
added before one PSI per tensor is read against the release's reference profile,
confidence weighted by requests, rates over all requests, accuracy over all labels.

Invariants:
- one SQL statement per call, whatever the range: the database groups the windows by
  release and bucket and joins each group's histograms into one text, so the rows that
  travel are at most releases x ``BUCKETS``;
- that statement reads at most ``max_windows`` windows, the newest: a longer range over a
  large fleet is cut at its old end and says so (``truncated``, ``covered_from``), it
  never costs more;
- buckets are aligned on multiples of their width since the epoch, so a refresh moves
  whole buckets and a bucket's figures do not depend on when it was asked for; a window
  falls in the bucket of its start (a downsampled row, which stands for several windows,
  in the bucket of its earliest);
- windows without a release (agents that sent none) are not charted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pydantic import BaseModel
from sqlalchemy import Engine, Integer, case, cast, func, literal_column, select
from sqlmodel import Session, col
from sqlmodel import select as select_rows

from protocol import ReferenceProfile

from ..devices.tables import telemetry_table
from ..errors import BadRequestError
from ..mqtt.telemetry import parse_drift_counts, to_utc
from ..rollouts.health import _HealthSums
from .tables import AlertEpisode, AlertRule

__all__ = [
    "BUCKETS",
    "MAX_ALERT_EPISODES",
    "MAX_WINDOWS",
    "RANGES_S",
    "AlertMark",
    "HealthPoint",
    "HealthSeries",
    "ReleaseSeries",
    "model_health_series",
    "range_seconds",
]

RANGES_S: dict[str, int] = {"1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400}
BUCKETS = 60
# Windows read per call at most, about 1.5 s of a page load on SQLite
# (bench/model_health_series.py): 277 devices sending a window every 10 s fill it in an
# hour; older telemetry is downsampled (5-minute rows after a day, by default).
MAX_WINDOWS = 100_000
MAX_ALERT_EPISODES = 200
# Newline cannot occur in a stored histogram (compact JSON), so it splits them again.
_SEPARATOR = "\n"
_T = telemetry_table

ReferenceOf = Callable[[int], ReferenceProfile | None]


class HealthPoint(BaseModel):
    """One release's fleet health over one bucket (None: not measured in it)."""

    start: datetime
    devices: int
    requests: int
    error_rate: float | None
    nonfinite_rate: float | None
    p95_ms: float | None
    confidence_mean: float | None
    output_drift_psi: float | None
    input_drift_psi: float | None
    labeled: int
    label_accuracy: float | None


class ReleaseSeries(BaseModel):
    version: int
    points: list[HealthPoint]  # buckets with telemetry only, oldest first


class AlertMark(BaseModel):
    """An alert episode of the model that overlaps the range."""

    rule_id: str
    metric: str
    version: int
    started_at: datetime
    ended_at: datetime | None


class HealthSeries(BaseModel):
    model: str
    version: int | None  # the one release asked for; None: every release
    range: str
    start: datetime
    end: datetime
    bucket_s: int
    windows: int  # telemetry windows read
    truncated: bool  # max_windows reached: only the newest windows were read
    covered_from: datetime | None  # the oldest window read, when truncated
    releases: list[ReleaseSeries]
    alerts: list[AlertMark]


def range_seconds(name: str) -> int:
    """The length of a range by its name; ``BadRequestError`` for any other name."""
    try:
        return RANGES_S[name]
    except KeyError:
        raise BadRequestError(
            f"range must be one of {', '.join(RANGES_S)}, not {name[:16]!r}"
        ) from None


def model_health_series(
    engine: Engine,
    *,
    model: str,
    range_name: str,
    now: datetime,
    reference_of: ReferenceOf,
    version: int | None = None,
    max_windows: int = MAX_WINDOWS,
) -> HealthSeries:
    """``model``'s health per release (only ``version`` unless None) over the range
    ``range_name`` ending at ``now``, in ``BUCKETS`` buckets; ``reference_of(version)``
    is the release's reference profile (drift is read only against a validation one)."""
    bucket_s = range_seconds(range_name) // BUCKETS
    end_epoch = math.ceil(to_utc(now).timestamp() / bucket_s) * bucket_s
    start_epoch = end_epoch - BUCKETS * bucket_s
    start = datetime.fromtimestamp(start_epoch, UTC)
    end = datetime.fromtimestamp(end_epoch, UTC)

    newest = select(
        _T.c.device_id,
        _T.c.version,
        _T.c.window_start,
        _T.c.requests,
        _T.c.errors,
        _T.c.nonfinite,
        _T.c.p95_ms,
        _T.c.confidence_mean,
        _T.c.max_drift_psi,
        _T.c.latency_counts,
        _T.c.drift_counts,
        _T.c.labeled,
        _T.c.labeled_correct,
    ).where(
        _T.c.model_name == model,
        _T.c.window_start >= start,
        _T.c.window_start < end,
        _T.c.version.is_not(None),
    )
    if version is not None:
        newest = newest.where(_T.c.version == version)
    windows = newest.order_by(_T.c.window_start.desc()).limit(max_windows).subquery()
    w = windows.c
    bucket = _bucket(engine.dialect.name, w.window_start, start_epoch, bucket_s).label("bucket")
    has_p95, has_confidence = w.p95_ms.is_not(None), w.confidence_mean.is_not(None)
    grouped = select(
        w.version,
        bucket,
        func.count().label("windows"),
        func.min(w.window_start).label("oldest"),
        func.count(func.distinct(w.device_id)).label("devices"),
        func.sum(w.requests).label("requests"),
        func.sum(w.errors).label("errors"),
        func.sum(w.nonfinite).label("nonfinite"),
        func.sum(case((has_p95, w.p95_ms * w.requests))).label("p95_sum"),
        func.sum(case((has_p95, w.requests))).label("p95_requests"),
        func.sum(case((has_confidence, w.confidence_mean * w.requests))).label("confidence_sum"),
        func.sum(case((has_confidence, w.requests))).label("confidence_requests"),
        func.max(w.max_drift_psi).label("max_drift_psi"),
        func.sum(w.labeled).label("labeled"),
        func.sum(w.labeled_correct).label("labeled_correct"),
        func.aggregate_strings(w.latency_counts, _SEPARATOR).label("latency_joined"),
        func.count(w.latency_counts).label("latency_rows"),
        func.aggregate_strings(w.drift_counts, _SEPARATOR).label("drift_joined"),
        func.count(w.drift_counts).label("drift_rows"),
    ).group_by(w.version, bucket)
    with engine.connect() as connection:
        rows = connection.execute(grouped).all()

    read = sum(int(row.windows) for row in rows)
    truncated = read >= max_windows
    covered_from = min((to_utc(row.oldest) for row in rows), default=None) if truncated else None
    by_version: dict[int, list[Any]] = {}
    for row in rows:
        if 0 <= int(row.bucket) < BUCKETS:
            by_version.setdefault(int(row.version), []).append(row)
    releases = []
    for each_version, version_rows in sorted(by_version.items()):
        reference = reference_of(each_version)
        points = [
            _point(row, start + timedelta(seconds=int(row.bucket) * bucket_s), reference)
            for row in sorted(version_rows, key=lambda r: int(r.bucket))
        ]
        releases.append(ReleaseSeries(version=each_version, points=points))
    return HealthSeries(
        model=model,
        version=version,
        range=range_name,
        start=start,
        end=end,
        bucket_s=bucket_s,
        windows=read,
        truncated=truncated,
        covered_from=covered_from,
        releases=releases,
        alerts=_alert_marks(engine, model=model, version=version, start=start, end=end),
    )


def _bucket(dialect: str, window_start: Any, start_epoch: int, bucket_s: int) -> Any:
    """The bucket index of ``window_start``, in whole seconds since the epoch, so that
    both databases put a window on a bucket's edge in the same bucket."""
    if dialect == "sqlite":
        # SQLite keeps UTC text; %s gives whole seconds since the epoch.
        seconds = cast(func.strftime("%s", window_start), Integer)
    else:
        seconds = cast(func.floor(func.extract("epoch", window_start)), Integer)
    # Written into the statement, not bound: PostgreSQL matches the select's expression
    # with the GROUP BY's only when they are the same text. Never negative (the query
    # reads windows from the range's start on), so integer division is the floor.
    return (seconds - literal_column(str(int(start_epoch)), Integer)) // literal_column(
        str(int(bucket_s)), Integer
    )


def _point(row: Any, start: datetime, reference: ReferenceProfile | None) -> HealthPoint:
    sums = _HealthSums()
    sums.add(row)
    latency = (row.latency_joined or "").split(_SEPARATOR) if row.latency_rows else []
    if not sums.add_joined_histograms(",".join(latency) or None, len(latency)):
        sums.add_histograms(latency)  # a malformed row among them: each parsed alone
    judged = reference if reference is not None and reference.source == "validation" else None
    fractions: Mapping[str, Sequence[float]] | None = None
    input_fractions: Mapping[str, Sequence[float]] | None = None
    if judged is not None:
        fractions = {name: h.fractions for name, h in judged.outputs.items()}
        # An output shadows an input of the same name, as on the device.
        input_fractions = {
            name: h.fractions for name, h in judged.inputs.items() if name not in judged.outputs
        }
        tensors = {n: len(f) for n, f in {**fractions, **input_fractions}.items()}
        if tensors and row.drift_rows:
            sums.add_drift(_drift_windows(row.drift_joined or ""), tensors)
    health = sums.health(fractions, input_fractions)
    return HealthPoint(
        start=start,
        devices=health.devices,
        requests=health.requests,
        error_rate=health.error_rate,
        nonfinite_rate=health.nonfinite_rate,
        p95_ms=health.p95_ms,
        confidence_mean=health.confidence_mean,
        output_drift_psi=health.max_drift_psi,
        input_drift_psi=health.max_input_drift_psi,
        labeled=health.labeled,
        label_accuracy=health.label_accuracy,
    )


def _drift_windows(joined: str) -> list[object]:
    texts = joined.split(_SEPARATOR)
    try:
        parsed: list[object] = orjson.loads("[" + ",".join(texts) + "]")
        if len(parsed) == len(texts):
            return parsed
    except orjson.JSONDecodeError:
        pass
    # A malformed row (not one of ours): each parsed alone, the bad ones left out.
    return [parse_drift_counts(text) for text in texts]


def _alert_marks(
    engine: Engine, *, model: str, version: int | None, start: datetime, end: datetime
) -> list[AlertMark]:
    query = (
        select_rows(AlertEpisode, col(AlertRule.metric))
        .join(AlertRule, col(AlertRule.id) == col(AlertEpisode.rule_id), isouter=True)
        .where(
            AlertEpisode.model_name == model,
            col(AlertEpisode.started_at) < end,
            (col(AlertEpisode.ended_at).is_(None)) | (col(AlertEpisode.ended_at) >= start),
        )
        .order_by(col(AlertEpisode.started_at))
        .limit(MAX_ALERT_EPISODES)
    )
    if version is not None:
        query = query.where(AlertEpisode.version == version)
    with Session(engine) as session:
        return [
            AlertMark(
                rule_id=episode.rule_id,
                metric=metric or "deleted rule",
                version=episode.version,
                started_at=to_utc(episode.started_at),
                ended_at=to_utc(episode.ended_at) if episode.ended_at else None,
            )
            for episode, metric in session.exec(query).all()
        ]
