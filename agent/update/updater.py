"""Carry one model's deployments through the update state machine, journaling each step.

A device runs one ``Updater`` per model (ADR 0003), each with its own journal, staging
directory and store slot; they share the trust state (``TrustKeeper``), the release
index and the content of the store, and never wait for each other.

Invariants (ARCHITECTURE.md §3, §5), per model:
- a deployment is acted on only after ``verify_deployment`` accepted it, and its sequence
  and time floor are persisted before any work starts, so a replay is refused even
  across a crash;
- the journal is persisted (fsync'd) before each state's work runs; after a crash the
  recovery mapping decides what happens, never the interrupted code;
- before activation nothing touches ``current``; from activation on, a failure or crash
  rolls back to the exact version that was current before, or, for the first version of
  this model the device ran, to none: the slot keeps no ``current`` and that model stops
  serving (the others serve on);
- an artifact an update staged is pinned until the deployment ends, so another model's
  garbage collection never removes it before it is activated;
- a memory budget, when set, is checked after the sandboxed check and before
  activation: the process's resident memory now (every model that serves) plus what the
  new version measured in the sandbox must fit, else ``insufficient_memory``;
- after a rollback, serving follows the store: the version that served before (still
  loaded, or loaded again after a crash), or nothing;
- each deployment reports exactly one final event (``committed``, ``failed`` or
  ``rolled_back``): its seq is reserved in the journal before it is queued, so a crash
  can only queue the same (device, seq) again, which the controller applies once. A
  deployment stopped by the transition cap reports its final event at once too.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from protocol import (
    Artifact,
    CheckBundleRef,
    ProbationPolicy,
    Release,
    ReleaseRef,
    mirror_artifact_url,
)

from ..clock import Clock
from ..config import AgentConfig
from ..errors import AgentError, StoreError, TransitionCapError
from ..serving.host import ServingHost, recorder_of
from ..serving.server import LoadedVersion
from ..stats.probation import ProbationOutcome
from ..stats.probation_watch import watch_probation
from .fetcher import DownloadOutcome, Fetcher
from .machine import Journal, UpdateEvent, UpdateState
from .memory import verify_memory_budget
from .names import check_bundle_name
from .state_files import ReleaseIndex, TrustKeeper, advance_journal, persist_journal
from .store import ModelStore
from .trust_state import VerifiedDeployment

__all__ = ["ModelChecker", "Reporter", "Updater", "UpdaterPaths"]

logger = logging.getLogger(__name__)

FINAL_EVENT_TYPES = {
    UpdateState.COMMITTED: "committed",
    UpdateState.FAILED: "failed",
    UpdateState.ROLLED_BACK: "rolled_back",
}


# (model file, check bundle file, release, latency budget in ms) -> report; raises a
# ModelCheckError. Both files were verified against the release's hashes first.
ModelChecker = Callable[[Path, Path, Release, float | None], Awaitable[object]]


class Reporter(Protocol):
    def reserve_event_seq(self) -> int: ...

    def event(
        self,
        event_type: str,
        *,
        journal: Journal | None,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
        seq: int | None = None,
        model: str | None = None,
    ) -> None: ...

    def state_changed(self) -> None: ...


@dataclass(frozen=True)
class UpdaterPaths:
    """One model's update files: ``updates/<model>/journal.json`` and its downloads."""

    journal: Path
    staging: Path

    @classmethod
    def for_model(cls, data_dir: Path, model: str) -> UpdaterPaths:
        directory = data_dir / "updates" / model
        return cls(directory / "journal.json", directory / "staging")

    @staticmethod
    def models_under(data_dir: Path) -> list[str]:
        """The models with update files under ``data_dir``."""
        try:
            return sorted(p.name for p in (data_dir / "updates").iterdir() if p.is_dir())
        except FileNotFoundError:
            return []


class Updater:
    """Runs one model's deployments one at a time; owns its journal and its store slot."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        model: str,
        paths: UpdaterPaths,
        trust: TrustKeeper,
        releases: ReleaseIndex,
        store: ModelStore,
        fetcher: Fetcher,
        check_model: ModelChecker,
        reporter: Reporter,
        clock: Clock,
        serving: ServingHost,
    ) -> None:
        self.config = config
        self.model = model
        self.paths = paths
        self.trust = trust
        self.releases = releases
        self.store = store
        self.fetcher = fetcher
        self.check_model = check_model
        self.reporter = reporter
        self.clock = clock
        self.phase = UpdateState.IDLE.value
        paths.staging.mkdir(parents=True, exist_ok=True)
        self.serving = serving
        # The deployment this updater last worked on, for the reported state.
        self.deployment_sequence: int | None = None
        # The version that served before the one on probation: the baseline, and what a
        # rollback swaps back to. Lives only in memory; after a crash the store decides.
        self._previous: LoadedVersion | None = None
        # The artifact mirrors the deployment under way names (base URLs, in order).
        self._mirrors: tuple[str, ...] = ()

    def release_of(self, sha256: str | None) -> ReleaseRef | None:
        """The release a stored artifact was deployed as, if this device knows it."""
        release = self.releases.get(sha256)
        return release.ref() if release else None

    @property
    def serving_now(self) -> LoadedVersion | None:
        return self.serving.current_of(self.model)

    def last_good(self) -> ReleaseRef | None:
        """What this model returns to if the fleet rolls it back: the committed version."""
        busy = self.phase in ("activating", "probation", "rolling_back")
        return self.release_of(
            self.store.previous_sha256() if busy else self.store.current_sha256()
        )

    async def serve_current(self) -> None:
        """Load whatever ``current`` points at (at start, and after a recovered rollback)."""
        current = self.store.current_sha256()
        release = self.releases.get(current)
        if current is None or release is None:
            return
        path = self.store.artifact_path(current)
        if path is None:
            return
        try:
            loaded = await asyncio.to_thread(self.serving.load, path, release)
        except AgentError as exc:
            logger.error("the current model %s does not load: %s", release.ref(), exc)
            return
        self.serving.serve(loaded)

    async def apply(self, verified: VerifiedDeployment) -> Journal:
        """Persist the deployment's marks, then run it to a terminal state."""
        release = verified.release
        if release is None:
            raise ValueError("a removal is not applied; call remove()")
        self.trust.accept_deployment(verified)
        self.deployment_sequence = verified.deployment.sequence
        self._mirrors = tuple(verified.deployment.mirrors)
        journal = Journal.begin(verified.deployment.sequence, release.ref())
        persist_journal(self.paths.journal, journal)
        return await self._drive(journal, release, verified.deployment.probation)

    def remove(self, verified: VerifiedDeployment) -> None:
        """Stop serving this model and forget its versions, then persist the order's mark.

        Removing first is safe because removing is idempotent: after a crash in between,
        the retained order comes again, is still above the mark, and removes nothing more.
        """
        stopped = self.serving.stop(self.model)
        self.store.remove_slot()
        self.paths.journal.unlink(missing_ok=True)
        self.trust.accept_deployment(verified)
        self.deployment_sequence = verified.deployment.sequence
        self.phase = UpdateState.IDLE.value
        logger.info("removed %s (was serving %s)", self.model, stopped)
        self.reporter.event(
            "removed",
            journal=None,
            model=self.model,
            details={"sequence": verified.deployment.sequence},
        )
        self.reporter.state_changed()
        self.store.collect_garbage()

    @property
    def holds_a_model(self) -> bool:
        """Whether this model has a version on the device or an update under way."""
        busy = self.phase not in ("idle", "committed", "failed", "rolled_back")
        return busy or self.store.current_sha256() is not None

    async def resume(self, journal: Journal) -> Journal:
        """Finish a journal recovered at boot (failed, rolling back, or terminal)."""
        self.deployment_sequence = journal.deployment_sequence
        return await self._drive(journal, None, None)

    async def _drive(
        self, journal: Journal, release: Release | None, policy: ProbationPolicy | None
    ) -> Journal:
        if journal.release is not None:
            self.store.pins.add(journal.release.sha256)
        while True:
            self._announce(journal)
            await self._pause_if_asked(journal)
            if journal.terminal:
                return self._finish(journal)
            event, reason = await self._work(journal, release, policy)
            try:
                journal = advance_journal(self.paths.journal, journal, event, reason=reason)
            except TransitionCapError as exc:
                # advance_journal persisted give_up(): finish it now, not at the next boot.
                logger.error("%s", exc)
                journal = journal.give_up()

    async def _work(
        self, journal: Journal, release: Release | None, policy: ProbationPolicy | None
    ) -> tuple[UpdateEvent, str | None]:
        """Do the state's work; return the event it ends with and, on error, why."""
        state, ref = journal.state, journal.release
        try:
            if state == UpdateState.IDLE:
                return (UpdateEvent.START, None) if release else (UpdateEvent.CANCEL, "crash")
            if release is None or ref is None or policy is None:
                # Only a recovered journal has no release: recovery leaves it failed or
                # rolling back, which need just the reference.
                return await self._recovered_work(journal)
            if state == UpdateState.FETCHING:
                await self._fetch(journal, release)
                return UpdateEvent.FETCHED, None
            if state == UpdateState.VERIFYING:
                await self._verify_and_stage(release, policy.latency_budget_ms)
                return UpdateEvent.VERIFIED, None
            if state == UpdateState.STAGED:
                return UpdateEvent.ACTIVATE, None
            if state == UpdateState.ACTIVATING:
                await self._activate(release)
                return UpdateEvent.ACTIVATED, None
            if state == UpdateState.PROBATION:
                return await self._probation(journal, policy)
            if state == UpdateState.ROLLING_BACK:
                await self._roll_back(ref.sha256)
                return UpdateEvent.ROLLBACK_DONE, None
        except AgentError as exc:
            logger.warning(
                "deployment %d: %s in %s: %s", journal.deployment_sequence, exc.reason, state, exc
            )
            return UpdateEvent.ERROR, exc.reason
        raise AssertionError(f"no work defined for {state}")  # pragma: no cover

    async def _recovered_work(self, journal: Journal) -> tuple[UpdateEvent, str | None]:
        if journal.state == UpdateState.ROLLING_BACK and journal.release is not None:
            await self._roll_back(journal.release.sha256)
            return UpdateEvent.ROLLBACK_DONE, None
        return UpdateEvent.ERROR, "crash"

    async def _activate(self, release: Release) -> None:
        """Load and warm the new model first, then switch the store, then serving."""
        artifact = release.artifact
        path = self.store.artifact_path(artifact.sha256)
        if path is None:
            raise StoreError(f"{release.ref()} is not in the store: nothing to activate")
        loaded = await asyncio.to_thread(self.serving.load, path, release)
        self.store.activate(artifact.sha256)
        self._previous = self.serving.serve(loaded)

    async def _probation(
        self, journal: Journal, policy: ProbationPolicy
    ) -> tuple[UpdateEvent, str | None]:
        candidate = recorder_of(self.serving_now)
        if candidate is None:
            return UpdateEvent.ERROR, "not_serving"
        verdict = await watch_probation(policy, candidate, recorder_of(self._previous))
        self.reporter.event(
            "probation_verdict",
            model=self.model,
            journal=journal,
            reason=verdict.reason,
            details={
                "outcome": str(verdict.outcome),
                "message": verdict.message,
                **verdict.numbers,
            },
        )
        if verdict.outcome is ProbationOutcome.ROLLBACK:
            return UpdateEvent.PROBATION_FAILED, str(verdict.reason)
        return UpdateEvent.PROBATION_PASSED, None

    async def _roll_back(self, sha256: str) -> None:
        """The store back to the model that served before (or none), and serving with it.

        Never a gap when there is a model to return to: the previous version, still
        loaded, is swapped back in (after a crash it is loaded from the store first).
        """
        kept = self.store.rollback(from_sha256=sha256)
        previous, self._previous = self._previous, None
        serving = self.serving_now
        if kept is None:
            self._stop_serving()
        elif serving is not None and self._loaded_from(serving, kept):
            return  # the switch never reached serving
        elif previous is not None and self._loaded_from(previous, kept):
            self.serving.serve(previous)
        else:
            await self.serve_current()

    def _stop_serving(self) -> None:
        """No version to return to: the model leaves the API rather than serve a rejected one."""
        stopped = self.serving.stop(self.model)
        if stopped is not None:
            logger.warning(
                "stopped serving %s %s: no model to roll back to", stopped.name, stopped.version
            )

    def _loaded_from(self, loaded: LoadedVersion, sha256: str) -> bool:
        return loaded.path.parent == self.store.model_dir(sha256)

    async def _fetch(self, journal: Journal, release: Release) -> None:
        """Download the artifact and its check bundle, each capped and hash-checked, from
        the deployment's mirrors in order, else from the controller."""
        artifact, bundle = release.artifact, release.check_bundle
        if not self.store.model_dir(artifact.sha256).exists():
            # Not in the store yet (a rollback to a kept model needs no download).
            await self._download(journal, artifact)
        if not self._stored_bundle(release).exists():
            await self._download(journal, bundle)

    async def _download(self, journal: Journal, ref: Artifact | CheckBundleRef) -> None:
        headers = {}
        if self.config.controller_token:
            # For the controller only: a mirror never sees the device's token.
            headers["Authorization"] = f"Bearer {self.config.controller_token}"
        outcome: DownloadOutcome = await self.fetcher.download(
            self.config.artifact_url(ref.sha256),
            self._download_path(ref.sha256),
            expected_length=ref.length,
            expected_sha256=ref.sha256,
            headers=headers,
            mirrors=[mirror_artifact_url(base, ref.sha256) for base in self._mirrors],
        )
        for rejection in outcome.rejected:
            # The operator's view of a bad mirror: one event per rejection, on the device.
            self.reporter.event(
                "mirror_rejected",
                journal=journal,
                reason=rejection.reason,
                model=self.model,
                details={
                    "mirror": rejection.mirror,
                    "sha256": ref.sha256,
                    "message": rejection.message[:500],
                },
            )

    async def _verify_and_stage(self, release: Release, latency_budget_ms: float | None) -> None:
        artifact, bundle = release.artifact, release.check_bundle
        in_store = self.store.artifact_path(artifact.sha256)
        candidate = in_store or self._download_path(artifact.sha256)
        stored_bundle = self._stored_bundle(release)
        bundle_file = (
            stored_bundle if stored_bundle.exists() else self._download_path(bundle.sha256)
        )
        report = await self.check_model(candidate, bundle_file, release, latency_budget_ms)
        self._verify_memory(release, report)
        if candidate != in_store:
            self.store.stage(artifact.sha256, artifact.filename, candidate)
        if bundle_file != stored_bundle:
            self.store.stage_check_bundle(artifact.sha256, bundle.sha256, bundle_file)
        self.releases.add(release)

    def _verify_memory(self, release: Release, report: object) -> None:
        verify_memory_budget(self.config.memory_budget_bytes, release, report)

    def _stored_bundle(self, release: Release) -> Path:
        directory = self.store.model_dir(release.artifact.sha256)
        return directory / check_bundle_name(release.check_bundle.sha256)

    def _finish(self, journal: Journal) -> Journal:
        """Terminal bookkeeping, idempotent: a crash anywhere here repeats it safely."""
        ref = journal.release
        if journal.state == UpdateState.COMMITTED and ref is not None:
            self.trust.record_commit(ref.model, ref.version)
        self._clean_staging()
        if not journal.final_reported:
            if journal.final_event_seq is None:
                journal = replace(journal, final_event_seq=self.reporter.reserve_event_seq())
                persist_journal(self.paths.journal, journal)
            self.reporter.event(
                FINAL_EVENT_TYPES[UpdateState(journal.state)],
                journal=journal,
                reason=journal.last_error,
                seq=journal.final_event_seq,
                model=self.model,
            )
            journal = replace(journal, final_reported=True)
            persist_journal(self.paths.journal, journal)
        if ref is not None:
            self.store.pins.discard(ref.sha256)
        self.store.collect_garbage()
        return journal

    def _announce(self, journal: Journal) -> None:
        self.phase = str(journal.state)
        if not journal.terminal:
            self.reporter.event(
                "phase", journal=journal, reason=journal.last_error, model=self.model
            )
        self.reporter.state_changed()

    async def _pause_if_asked(self, journal: Journal) -> None:
        wanted = self.config.pause_in_state
        if isinstance(wanted, dict):
            wanted = wanted.get(self.model)
        if wanted and journal.state == wanted:
            logger.warning("%s paused in state %s (pause_in_state is set)", self.model, wanted)
            await asyncio.Event().wait()

    def _download_path(self, sha256: str) -> Path:
        return self.paths.staging / f"{sha256}.download"

    def _clean_staging(self) -> None:
        for leftover in self.paths.staging.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
