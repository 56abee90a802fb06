"""View models: the figures the pages show, computed from the API's own data functions.

Nothing here queries the database beyond calling those functions, and nothing changes a
row; templates get plain values and never call back into the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlmodel import Session

from protocol import ProtocolError, Provenance, Release

from ..devices.inventory import FleetReleaseRow, PhaseCount, fleet_phases, fleet_releases
from ..registry.lineage import LineageGraph
from ..registry.releases import envelope_of
from ..registry.tables import ModelVersion, ReleaseRecord
from ..rollouts.records import UNFINISHED_STATUSES, list_rollouts, rollout_summary
from ..rollouts.schemas import RolloutDetail, RolloutSummary

__all__ = [
    "DashboardCommand",
    "FleetOverview",
    "LineageView",
    "VersionOrigin",
    "WaveProgress",
    "commands_for",
    "fleet_overview",
    "lineage_view",
    "version_origins",
    "wave_progress",
]


class DashboardCommand(StrEnum):
    """The rollout commands the dashboard offers; ``promote`` (skipping a soak) stays a
    deliberate CLI or API call."""

    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"


DONE_OUTCOMES = ("committed", "committed_unobserved")
FAILED_OUTCOMES = ("failed", "rolled_back")


@dataclass(frozen=True)
class FleetOverview:
    devices: int
    online: int
    phases: list[PhaseCount]
    releases: list[FleetReleaseRow]
    without_model: int
    active_rollouts: list[RolloutSummary]
    finished_rollouts: list[RolloutSummary]

    @property
    def offline(self) -> int:
        return self.devices - self.online


def fleet_overview(session: Session, *, finished_limit: int = 20) -> FleetOverview:
    phases = fleet_phases(session)
    releases = fleet_releases(session)
    devices = sum(p.devices for p in phases)
    summaries = [rollout_summary(session, record) for record in list_rollouts(session)]
    active = [s for s in summaries if s.status in UNFINISHED_STATUSES]
    finished = [s for s in summaries if s.status not in UNFINISHED_STATUSES]
    return FleetOverview(
        devices=devices,
        online=sum(p.online for p in phases),
        phases=phases,
        releases=releases,
        without_model=devices - sum(r.devices for r in releases),
        active_rollouts=active,
        finished_rollouts=finished[:finished_limit],
    )


@dataclass(frozen=True)
class WaveProgress:
    """One wave of a rollout: its target and where its devices stand."""

    wave: int
    size: str
    target: int  # cumulative: devices on the release once this wave is through
    share: int  # what this wave adds to the previous waves' target
    assigned: int
    done: int
    failed: int
    pending: int
    outcomes: dict[str, int]
    current: bool
    judged: bool | None  # None: not judged yet; else whether its gates passed


def wave_progress(described: RolloutDetail) -> list[WaveProgress]:
    """Per-wave counts from ``describe_rollout``'s answer."""
    verdicts = {j.wave: j.passed or j.overridden for j in described.judgements}
    rows = []
    previous_target = 0
    for wave in described.waves:
        outcomes: dict[str, int] = dict(wave.outcomes)
        rows.append(
            WaveProgress(
                wave=wave.wave,
                size=wave.size,
                target=wave.target,
                share=max(0, wave.target - previous_target),
                assigned=sum(outcomes.values()),
                done=sum(outcomes.get(o, 0) for o in DONE_OUTCOMES),
                failed=sum(outcomes.get(o, 0) for o in FAILED_OUTCOMES),
                pending=outcomes.get("pending", 0),
                outcomes=outcomes,
                current=wave.wave == described.wave and described.status in UNFINISHED_STATUSES,
                judged=verdicts.get(wave.wave),
            )
        )
        previous_target = wave.target
    return rows


def commands_for(status: str) -> list[DashboardCommand]:
    """The buttons that make sense for a rollout in ``status`` (the planner has the say)."""
    if status == "paused":
        return [DashboardCommand.RESUME, DashboardCommand.ABORT]
    if status in UNFINISHED_STATUSES:
        return [DashboardCommand.PAUSE, DashboardCommand.ABORT]
    return []


SHOWN_ENTRIES = 64
SHOWN_DATASETS = 16


@dataclass(frozen=True)
class LineageView:
    """A recorded lineage as plain values: every key optional, any value text."""

    source: str | None
    source_uri: str | None
    run_id: str | None
    experiment: str | None
    params: list[tuple[str, str]]
    metrics: list[tuple[str, Any]]  # numbers stay numbers, for the ``num`` filter
    datasets: list[tuple[str, str | None, str | None]]  # name, digest, source


@dataclass(frozen=True)
class VersionOrigin:
    """Where a version came from: its recorded lineage (a variant's is its root's, from
    version ``inherited_from``) and the provenance its signed release carries."""

    lineage: LineageView | None
    inherited_from: int | None
    provenance: Provenance | None


def version_origins(
    graph: LineageGraph, versions: Sequence[ModelVersion], releases: Sequence[ReleaseRecord]
) -> dict[int, VersionOrigin]:
    rows = {row.version: row for row in versions}
    signed = {record.version: _provenance_of(record) for record in releases}
    origins = {}
    for node in graph.nodes:
        root = rows.get(node.lineage_version)
        origins[node.version] = VersionOrigin(
            lineage=lineage_view(root.lineage) if root is not None else None,
            inherited_from=node.lineage_version if node.lineage_version != node.version else None,
            provenance=signed.get(node.version),
        )
    return origins


def lineage_view(lineage: object) -> LineageView | None:
    if not isinstance(lineage, dict) or not lineage:
        return None
    params = lineage.get("params")
    metrics = lineage.get("metrics")
    datasets = lineage.get("datasets")
    return LineageView(
        source=_text(lineage.get("source")),
        source_uri=_text(lineage.get("source_uri")),
        run_id=_text(lineage.get("run_id")),
        experiment=_text(lineage.get("experiment")),
        params=sorted((str(k), str(v)) for k, v in params.items())[:SHOWN_ENTRIES]
        if isinstance(params, dict)
        else [],
        metrics=sorted(
            (str(k), v if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v))
            for k, v in metrics.items()
        )[:SHOWN_ENTRIES]
        if isinstance(metrics, dict)
        else [],
        datasets=[
            (str(d.get("name") or "?"), _text(d.get("digest")), _text(d.get("source")))
            for d in datasets[:SHOWN_DATASETS]
            if isinstance(d, dict)
        ]
        if isinstance(datasets, list)
        else [],
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _provenance_of(record: ReleaseRecord) -> Provenance | None:
    try:
        return Release.from_unverified_envelope(envelope_of(record)).provenance
    except ProtocolError:
        return None  # a release this code cannot read is shown without its provenance
