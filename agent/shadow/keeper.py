"""The shadows of one device: one candidate per model at most, run beside what serves.

A shadow order (``protocol.ShadowOrder`` in a verified deployment) goes through what any
update does before it may run: its release verified (``agent.update.trust``), artifact and
check bundle downloaded with their length and hash checked, the model tested in the
sandbox, the memory budget checked (counting a one-thread copy of the serving model too:
the reference whose CPU time the candidate's is compared with), then loaded. It never
goes near the store, the journal or serving: its files live
in ``shadow/<model>/``, and the serving version only offers it copies of requests
(``agent.shadow.runner``).

Invariants:
- a shadow runs only from a verified order, and stops at its ``until``, at a stop order,
  when a deployment of a release of its model arrives, when the serving version changes
  under it (a rollback), and when the agent stops;
- nothing of a shadow survives a restart unless its order is still on: at start, an
  order kept on disk is verified again and must still be its model's newest accepted
  deployment and before its ``until``, else its directory is removed; a kept order is
  started again (downloads resume, the sandbox checks the model again);
- stopping removes the directory; a shadow that fails (download, check, load, nothing
  serving to compare with) reports ``shadow_failed`` and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import protocol
from durable import write_atomic
from protocol import Release
from tensors import ModelFormat

from ..clock import Clock
from ..config import AgentConfig
from ..errors import AgentError, RefusalError
from ..serving.host import ServingHost
from ..serving.server import LoadedVersion, ModelServer
from ..update.fetcher import Fetcher
from ..update.memory import verify_memory_budget
from ..update.names import check_bundle_name
from ..update.state_files import TrustKeeper
from ..update.trust import verify_deployment
from ..update.trust_state import VerifiedDeployment
from ..update.updater import ModelChecker, Reporter
from .runner import ShadowRunner

__all__ = ["ShadowKeeper"]

logger = logging.getLogger(__name__)

ORDER_FILE = "order.json"


class ShadowKeeper:
    def __init__(
        self,
        config: AgentConfig,
        *,
        trust: TrustKeeper,
        fetcher: Fetcher,
        check_model: ModelChecker,
        reporter: Reporter,
        clock: Clock,
        serving: ServingHost,
    ) -> None:
        self.config = config
        self.trust = trust
        self.fetcher = fetcher
        self.check_model = check_model
        self.reporter = reporter
        self.clock = clock
        self.serving = serving
        self.root = config.data_dir / "shadow"
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._runners: dict[str, ShadowRunner] = {}
        # The serving version each shadow was started beside (and its reference copies).
        self._serving_at_start: dict[str, LoadedVersion] = {}

    # -- orders --------------------------------------------------------------------------

    def order(self, verified: VerifiedDeployment, envelope: bytes) -> None:
        """Act on an accepted shadow order: start its candidate, or stop the model's shadow."""
        deployment = verified.deployment
        model = deployment.model
        self.stop(model, reason="replaced" if verified.shadow_release else "ordered")
        if verified.shadow_release is None:
            return
        directory = self.root / model
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(directory / ORDER_FILE, envelope)
        self._tasks[model] = asyncio.create_task(self._run(verified), name=f"shadow {model}")

    def stop(self, model: str, *, reason: str) -> None:
        """Stop the model's shadow, if any, and remove its files."""
        task = self._tasks.pop(model, None)
        if task is not None:
            task.cancel()
        runner = self._runners.pop(model, None)
        self._serving_at_start.pop(model, None)
        if runner is not None:
            self._untap(model)
            runner.close()
            self.reporter.event(
                "shadow_stopped",
                journal=None,
                model=model,
                reason=reason,
                details={"release": runner.release.model_dump(mode="json")},
            )
        shutil.rmtree(self.root / model, ignore_errors=True)

    async def resume(self) -> None:
        """At start: run again the shadows whose orders are still on; forget the rest."""
        try:
            kept = sorted(p for p in self.root.iterdir() if p.is_dir())
        except FileNotFoundError:
            return
        for directory in kept:
            verified = self._still_on(directory)
            if verified is None:
                shutil.rmtree(directory, ignore_errors=True)
                continue
            self._tasks[directory.name] = asyncio.create_task(
                self._run(verified), name=f"shadow {directory.name}"
            )

    async def close(self) -> None:
        for model in list(self._tasks) + list(self._runners):
            task = self._tasks.pop(model, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            runner = self._runners.pop(model, None)
            if runner is not None:
                self._untap(model)
                runner.close()

    # -- telemetry -----------------------------------------------------------------------

    def take_window(self, model: str) -> protocol.ShadowWindow | None:
        runner = self._runners.get(model)
        if runner is None:
            return None
        window = runner.take_window()
        if self.serving.current_of(model) is not self._serving_at_start.get(model):
            # A rollback swapped the serving version: the reference copy and the samples
            # no longer describe what serves. (Updates and removals stop shadows first.)
            self.stop(model, reason="serving_changed")
        return window

    def running(self) -> dict[str, protocol.ReleaseRef]:
        return {model: runner.release for model, runner in sorted(self._runners.items())}

    # -- the work ------------------------------------------------------------------------

    def _still_on(self, directory: Path) -> VerifiedDeployment | None:
        try:
            envelope = (directory / ORDER_FILE).read_bytes()
            verified = verify_deployment(
                envelope,
                self.trust.state,
                device_id=self.config.device_id,
                now=self.clock.now(),
                accepted=True,
            )
        except (OSError, RefusalError) as exc:
            logger.info("shadow of %s is over: %s", directory.name, exc)
            return None
        shadow = verified.deployment.shadow
        if (
            verified.shadow_release is None
            or shadow is None
            or shadow.until is None
            or verified.deployment.model != directory.name
            or self._expired(shadow.until)
        ):
            return None
        return verified

    def _expired(self, until: datetime) -> bool:
        return self.clock.now() >= until

    async def _run(self, verified: VerifiedDeployment) -> None:
        release = verified.shadow_release
        shadow = verified.deployment.shadow
        if release is None or shadow is None or shadow.until is None:
            raise ValueError("not a shadow order with a release")  # the callers checked
        model = release.model
        fraction = min(shadow.max_cpu_fraction, self.config.shadow_max_cpu_fraction)
        try:
            if fraction <= 0:
                raise _ShadowRefusedError("shadow_disabled", "shadow_max_cpu_fraction is 0 here")
            serving = self.serving.current_of(model)
            if serving is None:
                raise _ShadowRefusedError("not_serving", f"{model} serves nothing to compare with")
            path = await self._fetch(release)
            report = await self.check_model(path, self._bundle_path(release), release, None)
            # The candidate and a copy of the serving model, for the ratio of CPU times.
            verify_memory_budget(
                self.config.memory_budget_bytes,
                release,
                report,
                extra_bytes=serving.path.stat().st_size,
            )
            runner = ShadowRunner(
                release.ref(),
                lambda: self._load(path, release.artifact.format, str(release.version)),
                load_reference=lambda: self._load(serving.path, serving.format, serving.version),
                max_cpu_fraction=fraction,
            )
            try:
                await asyncio.to_thread(runner.start)
            except asyncio.CancelledError:
                runner.close()  # stopped while loading: its thread lets the models go
                raise
        except (AgentError, _ShadowRefusedError) as exc:
            reason = exc.reason
            logger.warning("shadow %s failed: %s: %s", release.ref(), reason, exc)
            self.reporter.event(
                "shadow_failed",
                journal=None,
                model=model,
                reason=str(reason),
                details={"release": release.ref().model_dump(mode="json"), "error": str(exc)},
            )
            self._tasks.pop(model, None)
            shutil.rmtree(self.root / model, ignore_errors=True)
            return
        self._runners[model] = runner
        self._serving_at_start[model] = serving
        self._tap(model, runner)
        logger.info(
            "shadowing %s with %s (at most %.0f%% of the time, %s priority) until %s",
            model,
            release.ref(),
            fraction * 100,
            runner.priority,
            shadow.until.isoformat(),
        )
        self.reporter.event(
            "shadow_started",
            journal=None,
            model=model,
            details={
                "release": release.ref().model_dump(mode="json"),
                "max_cpu_fraction": fraction,
                "priority": runner.priority,
                "until": shadow.until.isoformat(),
            },
        )
        await asyncio.sleep(max((shadow.until - self.clock.now()).total_seconds(), 0.0))
        self._tasks.pop(model, None)  # stop() must not cancel the task it runs in
        self.stop(model, reason="until")

    async def _fetch(self, release: Release) -> Path:
        directory = self.root / release.model
        headers = {}
        if self.config.controller_token:
            headers["Authorization"] = f"Bearer {self.config.controller_token}"
        path = directory / release.artifact.filename
        for ref, target in (
            (release.artifact, path),
            (release.check_bundle, self._bundle_path(release)),
        ):
            if not target.exists():
                await self.fetcher.download(
                    self.config.artifact_url(ref.sha256),
                    target,
                    expected_length=ref.length,
                    expected_sha256=ref.sha256,
                    headers=headers,
                )
        return path

    def _bundle_path(self, release: Release) -> Path:
        return self.root / release.model / check_bundle_name(release.check_bundle.sha256)

    def _load(self, path: Path, model_format: ModelFormat, version: str) -> LoadedVersion:
        """Load in the shadow's thread, on one thread: its CPU time is then all it costs.

        Not through ``ServingHost.load``: a shadow keeps no statistics of its own.
        """
        options = replace(self.serving.options, intra_op_threads=1, inter_op_threads=1)
        server = ModelServer(path.stem, options=options, load_backend=self.serving.load_backend)
        return server.load(path, model_format, version=version)

    def _tap(self, model: str, runner: ShadowRunner) -> None:
        serving = self.serving.current_of(model)
        if serving is not None:
            serving.tap(runner)

    def _untap(self, model: str) -> None:
        serving = self.serving.current_of(model)
        if serving is not None:
            serving.tap(None)


class _ShadowRefusedError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
