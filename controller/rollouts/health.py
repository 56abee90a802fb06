"""Wave health: what the telemetry of a group of devices says about a model.

A sync function over an ``Engine``, meant to run in a worker thread; the rollout engine
asks it for the devices of a wave and for the control group still on the old release.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from sqlalchemy import Engine, case, func, select

from protocol import ReferenceProfile
from protocol.histograms import LATENCY_BUCKETS, histogram_quantile
from tensors.profile import MIN_DRIFT_REQUESTS, MIN_DRIFT_VALUES, population_stability_index

from ..devices.tables import telemetry_table
from ..mqtt.telemetry import IN_CHUNK, parse_drift_counts, parse_latency_counts, to_utc
from .core import FleetHealth

__all__ = ["fleet_health"]

_T = telemetry_table


@dataclass
class _HealthSums:
    devices: int = 0
    requests: int = 0
    errors: int = 0
    nonfinite: int = 0
    p95_sum: float = 0.0
    p95_requests: int = 0
    confidence_sum: float = 0.0
    confidence_requests: int = 0
    labeled: int = 0
    labeled_correct: int = 0
    max_drift_psi: float | None = None
    latency_counts: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(LATENCY_BUCKETS, dtype=np.int64)
    )
    drift_counts: dict[str, npt.NDArray[np.int64]] = field(default_factory=dict)

    def add_joined_histograms(self, joined: str | None, rows: int) -> bool:
        """Add ``rows`` latency histograms the database joined with commas into one text
        (``[c,…],[c,…]``); False when it is not that (the rows are then read one by one)."""
        if not rows:
            return True
        if joined is None:
            return False
        # numpy's C parser reads every row's counts in one go.
        values = np.fromstring(joined.replace("[", "").replace("]", ""), dtype=np.int64, sep=",")
        if values.size != rows * LATENCY_BUCKETS or (values < 0).any():
            return False
        self.latency_counts += values.reshape(rows, LATENCY_BUCKETS).sum(axis=0)
        return True

    def add_histograms(self, texts: Iterable[str]) -> None:
        for text in texts:
            counts = parse_latency_counts(text)
            if counts is not None:
                self.latency_counts += np.asarray(counts, dtype=np.int64)

    def add_drift(self, windows: Iterable[object], tensors: Mapping[str, int]) -> None:
        """Add the windows' counts (parsed ``drift_counts``) of the ``tensors`` (name ->
        bins of the reference)."""
        # Gathered per tensor, then added up in one numpy call each: one small array per
        # window and tensor cost more than the rest of the health read together.
        gathered: dict[str, list[list[int]]] = {name: [] for name in tensors}
        for window in windows:
            if not isinstance(window, dict):
                continue
            for name, bins in tensors.items():
                counts = window.get(name)
                if isinstance(counts, list) and len(counts) == bins:
                    gathered[name].append(counts)
        for name, rows in gathered.items():
            if not rows:
                continue
            try:
                summed = np.asarray(rows, dtype=np.int64).sum(axis=0)
            except (ValueError, TypeError, OverflowError):  # a count that is not an integer
                continue
            if (summed < 0).any():
                continue
            total = self.drift_counts.setdefault(name, np.zeros(tensors[name], dtype=np.int64))
            total += summed

    def pooled_drift(self, fractions: Mapping[str, Sequence[float]]) -> tuple[float, int] | None:
        """The worst PSI among the tensors of ``fractions`` over the pooled counts, and its
        number of values, for tensors with ``MIN_DRIFT_VALUES`` values and a group with
        ``MIN_DRIFT_REQUESTS`` requests; None when there is no such tensor."""
        if self.requests < MIN_DRIFT_REQUESTS:
            return None
        worst: tuple[float, int] | None = None
        for name, counts in self.drift_counts.items():
            if name not in fractions:
                continue
            values = int(counts.sum())
            if values < MIN_DRIFT_VALUES:
                continue
            psi = population_stability_index(counts, fractions[name])
            if math.isfinite(psi) and (worst is None or psi > worst[0]):
                worst = (psi, values)
        return worst

    def add(self, row: Any) -> None:
        # PostgreSQL sums integers as numeric: Decimal in Python, hence the conversions.
        self.devices += int(row.devices or 0)
        self.requests += int(row.requests or 0)
        self.errors += int(row.errors or 0)
        self.nonfinite += int(row.nonfinite or 0)
        self.p95_sum += float(row.p95_sum or 0.0)
        self.p95_requests += int(row.p95_requests or 0)
        self.confidence_sum += float(row.confidence_sum or 0.0)
        self.confidence_requests += int(row.confidence_requests or 0)
        self.labeled += int(row.labeled or 0)
        self.labeled_correct += int(row.labeled_correct or 0)
        if row.max_drift_psi is not None:
            drift = float(row.max_drift_psi)
            self.max_drift_psi = max(drift, self.max_drift_psi or drift)

    def health(
        self,
        fractions: Mapping[str, Sequence[float]] | None = None,
        input_fractions: Mapping[str, Sequence[float]] | None = None,
    ) -> FleetHealth:
        def ratio(part: float, whole: int) -> float | None:
            return part / whole if whole else None

        pooled_p95 = histogram_quantile(self.latency_counts.tolist(), 0.95)
        # Pooled counts when the devices sent them; else the worst window's own figure.
        drift, drift_values = self.max_drift_psi, None
        if self.drift_counts and fractions is not None:
            pooled = self.pooled_drift(fractions)
            drift, drift_values = pooled if pooled is not None else (None, None)
        input_drift = self.pooled_drift(input_fractions) if input_fractions else None
        return FleetHealth(
            devices=self.devices,
            requests=self.requests,
            error_rate=ratio(self.errors, self.requests),
            nonfinite_rate=ratio(self.nonfinite, self.requests),
            p95_ms=pooled_p95 if pooled_p95 is not None else ratio(self.p95_sum, self.p95_requests),
            confidence_mean=ratio(self.confidence_sum, self.confidence_requests),
            max_drift_psi=drift,
            drift_values=drift_values,
            max_input_drift_psi=input_drift[0] if input_drift is not None else None,
            labeled=self.labeled,
            label_accuracy=ratio(self.labeled_correct, self.labeled),
        )


def fleet_health(
    engine: Engine,
    *,
    device_ids: Collection[str] | None,
    model: str,
    version: int | None,
    since: datetime,
    reference: ReferenceProfile | None = None,
    input_drift: bool = False,
) -> FleetHealth:
    """Model health over the windows of ``device_ids`` (None: every device) for ``model``
    (and ``version``, unless None) that started at or after ``since``.

    ``devices`` counts devices with at least one window. Rates are None when there were no
    requests. ``p95_ms`` is the p95 of every request of the group: the windows' latency
    histograms are added up first (``protocol.histograms``), so it does not depend on how
    requests spread over windows and devices. Only when no window carries a histogram
    (older agents) is it the request-weighted mean of the windows' p95s.
    ``confidence_mean`` is request-weighted.

    ``max_drift_psi`` is the worst output's PSI against ``reference`` (the release's
    profile of its validation data) over the drift counts of all the group's windows
    added up, read only from ``MIN_DRIFT_VALUES`` values and ``MIN_DRIFT_REQUESTS``
    requests on: a window's own PSI is biased upwards by about 9/N on N values, so the
    worst of thousands of small windows grows with the fleet even when nothing drifts.
    Without a reference of validation data or counts (older agents) it is the largest
    any window judged by itself. Input drift is the data's, not the release's: it is read
    (``max_input_drift_psi``, pooled likewise) only when ``input_drift`` is asked, for
    alerts and metrics, never for a rollout gate.
    """
    # One chunk of no device filter for the whole fleet; the ids in IN_CHUNK pieces else.
    chunks: list[list[str] | None] = [None]
    if device_ids is not None:
        ids = sorted(set(device_ids))
        chunks = [ids[start : start + IN_CHUNK] for start in range(0, len(ids), IN_CHUNK)]
    sums = _HealthSums()
    judged = reference if reference is not None and reference.source == "validation" else None
    fractions = {name: h.fractions for name, h in judged.outputs.items()} if judged else None
    # An output shadows an input of the same name, as on the device.
    input_fractions = (
        {n: h.fractions for n, h in judged.inputs.items() if n not in judged.outputs}
        if judged and input_drift
        else None
    )
    tensors = {n: len(f) for n, f in {**(fractions or {}), **(input_fractions or {})}.items()}
    if not chunks:
        return sums.health(fractions, input_fractions)
    has_p95 = _T.c.p95_ms.is_not(None)
    has_confidence = _T.c.confidence_mean.is_not(None)
    columns = (
        func.count(func.distinct(_T.c.device_id)).label("devices"),
        func.sum(_T.c.requests).label("requests"),
        func.sum(_T.c.errors).label("errors"),
        func.sum(_T.c.nonfinite).label("nonfinite"),
        func.sum(case((has_p95, _T.c.p95_ms * _T.c.requests))).label("p95_sum"),
        func.sum(case((has_p95, _T.c.requests))).label("p95_requests"),
        func.sum(case((has_confidence, _T.c.confidence_mean * _T.c.requests))).label(
            "confidence_sum"
        ),
        func.sum(case((has_confidence, _T.c.requests))).label("confidence_requests"),
        func.max(_T.c.max_drift_psi).label("max_drift_psi"),
        func.sum(_T.c.labeled).label("labeled"),
        func.sum(_T.c.labeled_correct).label("labeled_correct"),
        # Each window's histogram and counts joined into one text by the database, in the
        # same scan: fetching tens of thousands of rows cost more than everything else.
        *_joined(_T.c.latency_counts, "latency"),
        *(_joined(_T.c.drift_counts, "drift") if tensors else ()),
    )
    with engine.connect() as connection:
        for chunk in chunks:
            query = select(*columns).where(
                _T.c.model_name == model, _T.c.window_start >= to_utc(since)
            )
            if chunk is not None:
                query = query.where(_T.c.device_id.in_(chunk))
            if version is not None:
                query = query.where(_T.c.version == version)
            row = connection.execute(query).one()
            sums.add(row)
            if not sums.add_joined_histograms(row.latency_joined, row.latency_rows):
                sums.add_histograms(connection.scalars(_each(query, _T.c.latency_counts)).all())
            if tensors:
                drift = _parsed_drift(connection, query, row.drift_joined, row.drift_rows)
                sums.add_drift(drift, tensors)
    return sums.health(fractions, input_fractions)


def _parsed_drift(connection: Any, query: Any, joined: str | None, rows: int) -> list[object]:
    if not rows:
        return []
    try:
        parsed: list[object] = orjson.loads("[" + (joined or "") + "]")
        if len(parsed) == rows:
            return parsed
    except orjson.JSONDecodeError:
        pass
    # A malformed row (not one of ours): each row parsed alone, the bad ones left out.
    return [
        parse_drift_counts(text) for text in connection.scalars(_each(query, _T.c.drift_counts))
    ]


def _joined(column: Any, name: str) -> tuple[Any, Any]:
    """The non-null texts of ``column`` joined with commas, and how many there are."""
    return (
        func.aggregate_strings(column, ",").label(f"{name}_joined"),
        func.count(column).label(f"{name}_rows"),
    )


def _each(query: Any, column: Any) -> Any:
    return query.with_only_columns(column).where(column.is_not(None))
