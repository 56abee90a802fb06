"""Telemetry windows in the database: batched writes, downsampling, retention.

Sync functions over an ``Engine``, meant to run in a worker thread; each call is one
transaction, written with SQLAlchemy Core (``telemetry`` is a plain table).

Invariants:
- a window is stored once per (device_id, model, window_start), whatever MQTT redelivers
  and however many controllers read it: one ``INSERT … ON CONFLICT DO NOTHING`` per call,
  executed for all rows at once;
- windows of devices the database does not know are skipped, never an error;
- times are stored in UTC (SQLite keeps no offset, so every write converts first) and
  read back as aware UTC datetimes;
- a window's latency histogram is kept (``latency_counts``, JSON) only in the buckets of
  ``protocol.histograms``, the one layout whose counts can be added across devices; its
  drift counts (``drift_counts``, per tensor) as sent; its shadow figures
  (``shadow``, a ``protocol.ShadowWindow`` as JSON) with the shadow's version;
- downsampling keeps sums exact (requests, errors, non-finite outputs, seconds observed,
  ``merged``, latency, drift and shadow counts) and the request-weighted means of p50/p95/p99 and
  confidence; a merged row
  takes the earliest ``window_start`` of its group, which no other row can hold (the
  merged rows are deleted in the same transaction), so the unique key survives even when
  one bucket holds windows of two versions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Dialect,
    Engine,
    bindparam,
    delete,
    exists,
    insert,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.dialects.sqlite.base import SQLiteDialect

from protocol import LatencySummary, ShadowWindow, TelemetryBatch
from protocol.histograms import LATENCY_BOUNDS_MS, LATENCY_BUCKETS

from ..devices.tables import DeviceRecord, telemetry_table

__all__ = [
    "DOWNSAMPLE_LOOKBACK_S",
    "IN_CHUNK",
    "TelemetryRow",
    "active_device_ids",
    "add_drift_counts",
    "add_shadow_windows",
    "downsample_telemetry",
    "parse_drift_counts",
    "parse_latency_counts",
    "parse_shadow",
    "prune_telemetry",
    "telemetry_rows",
    "to_utc",
    "write_telemetry",
    "write_telemetry_rows",
]

# Lists of device ids go to the database in chunks of this many bound parameters.
IN_CHUNK = 900
# Downsampling looks at raw windows this far behind its cutoff (see downsample_telemetry).
DOWNSAMPLE_LOOKBACK_S = 3600.0

_T = telemetry_table
# A row of ``telemetry`` without its id: column name to value.
TelemetryRow = dict[str, Any]
_WEIGHTED = ("p50_ms", "p95_ms", "p99_ms", "confidence_mean")
_COLUMNS = tuple(column.name for column in _T.c if column.name != "id")
_DEVICES = DeviceRecord.__table__  # type: ignore[attr-defined]
# SQLAlchemy reports row counts of INSERTs and executemany only when asked.
_ROWCOUNT = {"preserve_rowcount": True}


def _insert_sql(dialect: Dialect) -> str:
    """``INSERT … SELECT <one row of parameters> WHERE EXISTS (its device) ON CONFLICT DO
    NOTHING``, compiled once, with named parameters, for the driver's executemany."""
    values = select(*(bindparam(name, type_=_T.c[name].type) for name in _COLUMNS)).where(
        exists().where(
            _DEVICES.c.id == bindparam("device_id"), _DEVICES.c.decommissioned_at.is_(None)
        )
    )
    if dialect.name == "postgresql":
        statement: Any = postgresql.insert(_T).from_select(_COLUMNS, values)
    else:
        statement = sqlite.insert(_T).from_select(_COLUMNS, values)
    statement = statement.on_conflict_do_nothing()
    return str(statement.compile(dialect=dialect))


_INSERT_SQL = {
    "postgresql": _insert_sql(PGDialect_psycopg(paramstyle="pyformat")),  # type: ignore[no-untyped-call]
    "sqlite": _insert_sql(SQLiteDialect(paramstyle="named")),
}
# SQLAlchemy's own conversion of a datetime to SQLite's text, so that rows written
# around its bind processing read back like any other.
_SQLITE_DATETIME = _T.c.window_start.type.dialect_impl(SQLiteDialect()).bind_processor(
    SQLiteDialect()
)


def to_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime (as SQLite returns them) is taken as UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def active_device_ids(connection: Connection, device_ids: Iterable[str]) -> set[str]:
    """Those of ``device_ids`` that are enrolled and not decommissioned: reports of
    anyone else are dropped (a decommissioned device may still reach a broker)."""
    wanted = sorted(set(device_ids))
    found: set[str] = set()
    for start in range(0, len(wanted), IN_CHUNK):
        chunk = wanted[start : start + IN_CHUNK]
        found.update(
            connection.scalars(
                select(_DEVICES.c.id).where(
                    _DEVICES.c.id.in_(chunk), _DEVICES.c.decommissioned_at.is_(None)
                )
            )
        )
    return found


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def telemetry_rows(batches: Sequence[TelemetryBatch]) -> list[TelemetryRow]:
    """One row per window, as ``telemetry`` stores it.

    A row holds only strings, numbers and datetimes, so the garbage collector does not
    track it: the bridge queues rows, not the parsed batches, which would make every
    collection walk thousands of live objects (that tripled the cost of a message).
    """
    rows = []
    for batch in batches:
        for window in batch.windows:
            latency = window.latency
            # Output drift of a window the device could judge (enough requests, a reference
            # of validation data): input drift is the data's, and never gates a rollout.
            drift = window.output_drift_psi
            rows.append(
                {
                    "device_id": batch.device_id,
                    "model_name": window.model,
                    "version": window.release.version if window.release else None,
                    "window_start": to_utc(window.window_start),
                    "window_s": window.window_s,
                    "requests": window.requests,
                    "errors": window.errors,
                    "nonfinite": window.nonfinite_outputs,
                    "p50_ms": _finite(latency.p50_ms) if latency else None,
                    "p95_ms": _finite(latency.p95_ms) if latency else None,
                    "p99_ms": _finite(latency.p99_ms) if latency else None,
                    "confidence_mean": window.top1_confidence_mean,
                    "max_drift_psi": drift if drift is not None and math.isfinite(drift) else None,
                    "latency_counts": _latency_counts(latency),
                    "drift_counts": _json(window.drift_counts) if window.drift_counts else None,
                    "labeled": window.labeled,
                    "labeled_correct": window.labeled_correct,
                    "shadow": None
                    if window.shadow is None
                    else window.shadow.model_dump_json(exclude_defaults=False),
                    "shadow_version": None
                    if window.shadow is None
                    else window.shadow.release.version,
                    "merged": 1,
                }
            )
    return rows


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _latency_counts(latency: LatencySummary | None) -> str | None:
    """The histogram as stored: a JSON list, only in the shared bucket layout."""
    if latency is None or tuple(latency.bounds_ms) != LATENCY_BOUNDS_MS:
        return None
    return _json(latency.counts)


def parse_drift_counts(text: str | None) -> dict[str, list[int]]:
    """Stored drift counts (tensor -> counts per bin); empty when absent or malformed."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {
        name: counts
        for name, counts in value.items()
        if isinstance(counts, list)
        and all(isinstance(count, int) and count >= 0 for count in counts)
    }


def add_drift_counts(
    total: dict[str, list[int]], counts: Mapping[str, list[int]]
) -> dict[str, list[int]]:
    """``total`` plus ``counts``, tensor by tensor; a tensor whose bins differ in number
    from the total's (another reference) is left out of the sum."""
    for name, values in counts.items():
        have = total.get(name)
        if have is None:
            total[name] = list(values)
        elif len(have) == len(values):
            total[name] = [a + b for a, b in zip(have, values, strict=True)]
    return total


def parse_latency_counts(text: str | None) -> list[int] | None:
    """A stored histogram, or None when absent or not ``LATENCY_BUCKETS`` counts."""
    if text is None:
        return None
    try:
        counts = json.loads(text)
    except ValueError:
        return None
    if not isinstance(counts, list) or len(counts) != LATENCY_BUCKETS:
        return None
    if not all(isinstance(count, int) and count >= 0 for count in counts):
        return None
    return counts


def _insert_ignoring_duplicates(connection: Connection, rows: Sequence[TelemetryRow]) -> int:
    """One executemany for all rows, straight through the driver; returns rows inserted.

    Rows of unknown or decommissioned devices and rows already stored are skipped by the
    database itself.
    SQLAlchemy's per-row parameter processing cost several times what the database
    spends inserting, while the bridge's event loop waited for the GIL; psycopg pipelines
    the executemany (one round trip), SQLite runs it as one prepared statement.
    """
    dialect = connection.dialect.name
    sql = _INSERT_SQL.get(dialect)
    if sql is None:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise NotImplementedError(f"telemetry ingest does not support {dialect}")
    if dialect == "sqlite":
        assert _SQLITE_DATETIME is not None
        rows = [{**row, "window_start": _SQLITE_DATETIME(row["window_start"])} for row in rows]
    result = connection.exec_driver_sql(sql, list(rows), execution_options=_ROWCOUNT)
    return max(result.rowcount, 0)


def write_telemetry(engine: Engine, batches: Sequence[TelemetryBatch]) -> int:
    """Store every window of ``batches``; returns the number of rows newly inserted.

    Windows already stored (a redelivery, another controller) and windows of unknown
    devices are skipped.
    """
    return write_telemetry_rows(engine, telemetry_rows(batches))


def write_telemetry_rows(engine: Engine, rows: Sequence[TelemetryRow]) -> int:
    """``write_telemetry`` for rows made by ``telemetry_rows``."""
    if not rows:
        return 0
    with engine.begin() as connection:
        return _insert_ignoring_duplicates(connection, rows)


def prune_telemetry(engine: Engine, *, older_than: datetime) -> int:
    """Delete windows that started before ``older_than``; returns how many."""
    with engine.begin() as connection:
        result = connection.execute(
            delete(_T).where(_T.c.window_start < to_utc(older_than)),
            execution_options=_ROWCOUNT,
        )
        return max(result.rowcount, 0)


def downsample_telemetry(
    engine: Engine,
    *,
    older_than: datetime,
    bucket_s: float,
    lookback_s: float = DOWNSAMPLE_LOOKBACK_S,
) -> int:
    """Merge windows that started before ``older_than`` into one row per device, model,
    version and ``bucket_s`` bucket (aligned on the Unix epoch); returns rows removed.

    Only buckets holding a raw window (``merged = 1``) that started at most ``lookback_s``
    before the cutoff are looked at, so a call reads what crossed the cutoff lately, not
    the whole history; raw windows older than that (a controller down for longer) stay
    as they are until they are pruned. Idempotent: a bucket already merged has one row.
    """
    if not (math.isfinite(bucket_s) and bucket_s > 0):
        raise ValueError(f"bucket_s must be a positive number, not {bucket_s}")
    cutoff = to_utc(older_than)
    start = cutoff - timedelta(seconds=lookback_s)
    with engine.begin() as connection:
        raw = connection.execute(
            select(_T)
            .where(_T.c.merged == 1, _T.c.window_start >= start, _T.c.window_start < cutoff)
            .order_by(_T.c.device_id, _T.c.model_name, _T.c.window_start)
            .with_for_update()
        ).mappings()
        groups: dict[tuple[str, str, int | None, int], list[dict[str, Any]]] = {}
        for raw_row in raw:
            row = dict(raw_row)
            groups.setdefault(_bucket_key(row, bucket_s), []).append(row)
        if not groups:
            return 0
        # Earlier merges of the same buckets join the new raw windows.
        for earlier in _merged_rows(connection, groups, bucket_s=bucket_s, cutoff=cutoff):
            key = _bucket_key(earlier, bucket_s)
            if key in groups:
                groups[key].append(earlier)
        removed = 0
        for rows in groups.values():
            if len(rows) < 2:
                continue
            connection.execute(delete(_T).where(_T.c.id.in_([row["id"] for row in rows])))
            connection.execute(insert(_T).values(**_merge(rows)))
            removed += len(rows) - 1
        return removed


def _merged_rows(
    connection: Connection,
    groups: Mapping[tuple[str, str, int | None, int], object],
    *,
    bucket_s: float,
    cutoff: datetime,
) -> list[dict[str, Any]]:
    """Rows merged earlier in the buckets of ``groups``' devices, to merge again."""
    since = _bucket_start(min(key[3] for key in groups), bucket_s)
    device_ids = sorted({key[0] for key in groups})
    rows: list[dict[str, Any]] = []
    for start in range(0, len(device_ids), IN_CHUNK):
        rows.extend(
            dict(row)
            for row in connection.execute(
                select(_T)
                .where(
                    _T.c.merged > 1,
                    _T.c.window_start >= since,
                    _T.c.window_start < cutoff,
                    _T.c.device_id.in_(device_ids[start : start + IN_CHUNK]),
                )
                .with_for_update()
            ).mappings()
        )
    return rows


def _bucket_key(row: Mapping[str, Any], bucket_s: float) -> tuple[str, str, int | None, int]:
    bucket = math.floor(to_utc(row["window_start"]).timestamp() / bucket_s)
    return row["device_id"], row["model_name"], row["version"], bucket


def _bucket_start(bucket: int, bucket_s: float) -> datetime:
    return datetime.fromtimestamp(bucket * bucket_s, UTC)


def _merge(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    first = min(rows, key=lambda row: to_utc(row["window_start"]))
    merged: dict[str, Any] = {
        "device_id": first["device_id"],
        "model_name": first["model_name"],
        "version": first["version"],
        "window_start": to_utc(first["window_start"]),
        "window_s": sum(row["window_s"] for row in rows),
        "requests": sum(row["requests"] for row in rows),
        "errors": sum(row["errors"] for row in rows),
        "nonfinite": sum(row["nonfinite"] for row in rows),
        "labeled": sum(row["labeled"] for row in rows),
        "labeled_correct": sum(row["labeled_correct"] for row in rows),
        "merged": sum(row["merged"] for row in rows),
    }
    for name in _WEIGHTED:
        merged[name] = _weighted_mean((row[name], row["requests"]) for row in rows)
    drifts = [row["max_drift_psi"] for row in rows if row["max_drift_psi"] is not None]
    merged["max_drift_psi"] = max(drifts) if drifts else None
    histograms = [parse_latency_counts(row["latency_counts"]) for row in rows]
    # Summed only when every merged window has one: a partial sum would under-count.
    if all(counts is not None for counts in histograms):
        merged["latency_counts"] = _json([sum(column) for column in zip(*histograms, strict=True)])
    else:
        merged["latency_counts"] = None
    drift: dict[str, list[int]] = {}
    for row in rows:
        add_drift_counts(drift, parse_drift_counts(row["drift_counts"]))
    merged["drift_counts"] = _json(drift) if drift else None
    merged["shadow"], merged["shadow_version"] = _merge_shadows(rows)
    return merged


def _merge_shadows(rows: Sequence[Mapping[str, Any]]) -> tuple[str | None, int | None]:
    """The shadow figures of the first shadow's release, added up (a device shadows one
    candidate at a time; another's windows in the same bucket are left out)."""
    shadows = [parse_shadow(row.get("shadow")) for row in rows]
    kept = [shadow for shadow in shadows if shadow is not None]
    if not kept:
        return None, None
    total = kept[0]
    for shadow in kept[1:]:
        if shadow.release == total.release:
            total = add_shadow_windows(total, shadow)
    return total.model_dump_json(), total.release.version


def parse_shadow(text: str | None) -> ShadowWindow | None:
    """A stored shadow window; None when absent or malformed."""
    if text is None:
        return None
    try:
        return ShadowWindow.model_validate_json(text)
    except ValueError:
        return None


def add_shadow_windows(total: ShadowWindow, more: ShadowWindow) -> ShadowWindow:
    """Two shadow windows of one release as one: every figure is a sum or a count."""
    sums = {name: getattr(total, name) + getattr(more, name) for name in _SHADOW_SUMS}
    for name in ("cpu_counts", "serving_cpu_counts"):
        sums[name] = [a + b for a, b in zip(getattr(total, name), getattr(more, name), strict=True)]
    return total.model_copy(update=sums)


_SHADOW_SUMS = (
    "samples",
    "skipped",
    "errors",
    "nonfinite",
    "compared_rows",
    "agreed_rows",
    "confidence_sum",
    "serving_confidence_sum",
    "distance_sum",
)


def _weighted_mean(pairs: Iterable[tuple[float | None, int]]) -> float | None:
    """The mean of the values weighted by requests; None when no request carries one."""
    total = weight = 0.0
    for value, requests in pairs:
        if value is not None and requests > 0:
            total += value * requests
            weight += requests
    return total / weight if weight else None
