"""Every model on the device, each with its own updater, queue and worker (ADR 0003).

A desired state lists one signed deployment per model. Each entry is verified when it
arrives, which drops the redelivered ones quietly and names the model it is for; it then
waits in that model's queue (only the newest waits) for the model's worker, which
verifies it again against the marks of that moment and applies it, or removes the model.
Workers never wait for each other: an update of one model, probation and rollback
included, does not block serving, updating or rolling back another. A deployment that
orders a shadow (``agent.shadow``) is accepted by the model's worker and handed to the
``ShadowKeeper``; serving does not change. A release or a removal ends the model's shadow.

Invariants:
- nothing an entry says is acted on before it verified in the worker that acts on it, for
  the model that worker owns;
- at most ``MAX_MODELS_PER_DEVICE`` models have an updater; a deployment of one more is
  refused with ``too_many_models`` after the updaters that hold nothing are let go;
- the stores of all models share one content directory and one set of pins, so no
  model's garbage collection removes a file another model serves or is staging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil

from protocol import MAX_MODELS_PER_DEVICE, ModelState

from ..clock import Clock
from ..config import AgentConfig
from ..errors import (
    AgentError,
    DuplicateDeploymentError,
    ModelMismatchError,
    RefusalError,
    TooManyModelsError,
    TransitionCapError,
)
from ..serving.host import ServingHost
from ..shadow.keeper import ShadowKeeper
from .fetcher import Fetcher
from .legacy_layout import adopt_one_model_layout
from .state_files import ReleaseIndex, TrustKeeper, load_journal, recover_journal
from .store import ModelStore
from .trust import read_desired_state, verify_deployment
from .trust_state import VerifiedDeployment
from .updater import ModelChecker, Reporter, Updater, UpdaterPaths

__all__ = ["ModelUpdates", "busiest_phase"]

logger = logging.getLogger(__name__)

# The device's one ``phase`` is its busiest model's: work under way outranks a result,
# and the steps closest to serving outrank the ones before them.
PHASE_RANK = (
    "rolling_back",
    "activating",
    "probation",
    "staged",
    "verifying",
    "fetching",
    "failed",
    "rolled_back",
    "committed",
    "idle",
)


def busiest_phase(phases: list[str]) -> str:
    ranked = [phase for phase in PHASE_RANK if phase in phases]
    return ranked[0] if ranked else "idle"


class ModelUpdates:
    """The updaters of one device's models, made when a model first appears."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        trust: TrustKeeper,
        releases: ReleaseIndex,
        fetcher: Fetcher,
        check_model: ModelChecker,
        reporter: Reporter,
        clock: Clock,
        serving: ServingHost,
    ) -> None:
        self.config = config
        self.trust = trust
        self.releases = releases
        self.fetcher = fetcher
        self.check_model = check_model
        self.reporter = reporter
        self.clock = clock
        self.serving = serving
        self.store_root = config.data_dir / "store"
        # Hashes no store's garbage collection may remove: what an update is staging.
        self.pins: set[str] = set()
        self.updaters: dict[str, Updater] = {}
        self._pending: dict[str, asyncio.Queue[bytes]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self.shadows = ShadowKeeper(
            config,
            trust=trust,
            fetcher=fetcher,
            check_model=check_model,
            reporter=reporter,
            clock=clock,
            serving=serving,
        )
        adopt_one_model_layout(config.data_dir, releases)
        known = set(ModelStore.models_in(self.store_root))
        known |= set(UpdaterPaths.models_under(config.data_dir))
        for model in sorted(known):
            self.updater(model)
        serving.api.should_serve = self.models_with_a_current_version

    def models_with_a_current_version(self) -> list[str]:
        return [m for m, u in self.updaters.items() if u.store.current_sha256() is not None]

    def updater(self, model: str) -> Updater:
        """The updater of ``model``, made on first use."""
        known = self.updaters.get(model)
        if known is not None:
            return known
        if len(self.updaters) >= MAX_MODELS_PER_DEVICE:
            self._let_go_of_empty_models()
        if len(self.updaters) >= MAX_MODELS_PER_DEVICE:
            raise TooManyModelsError(
                f"the device holds {len(self.updaters)} models, the most it may; "
                f"remove one before deploying {model}"
            )
        made = Updater(
            self.config,
            model=model,
            paths=UpdaterPaths.for_model(self.config.data_dir, model),
            trust=self.trust,
            releases=self.releases,
            store=ModelStore(self.store_root, model, pins=self.pins),
            fetcher=self.fetcher,
            check_model=self.check_model,
            reporter=self.reporter,
            clock=self.clock,
            serving=self.serving,
        )
        self.updaters[model] = made
        return made

    def set_config(self, config: AgentConfig) -> None:
        """Use ``config`` from the next step of every model on (the simulator's kills)."""
        self.config = config
        self.shadows.config = config
        for updater in self.updaters.values():
            updater.config = config

    # -- at start --------------------------------------------------------------------

    async def recover(self) -> None:
        """Finish every update a crash interrupted, one model after another."""
        for model, updater in list(self.updaters.items()):
            path = updater.paths.journal
            try:
                journal = recover_journal(path)
            except TransitionCapError as exc:
                logger.error("%s: %s", model, exc)
                journal = load_journal(path)
            if journal is not None and not (journal.terminal and journal.final_reported):
                logger.warning(
                    "%s: resuming deployment %d from %s",
                    model,
                    journal.deployment_sequence,
                    journal.state,
                )
                await updater.resume(journal)

    async def serve_current(self) -> None:
        """Serve every model's current version, then run again the shadows still on."""
        for updater in list(self.updaters.values()):
            await updater.serve_current()
        await self.shadows.resume()

    # -- while running ---------------------------------------------------------------

    def submit(self, payload: bytes) -> None:
        """Route each deployment of a retained desired state to its model's worker."""
        try:
            envelopes = read_desired_state(payload, device_id=self.config.device_id)
        except RefusalError as exc:
            self._refused(exc, model=None)
            return
        for envelope in envelopes:
            try:
                verified = self._verify(envelope)
                self._queue_for(verified.deployment.model, envelope)
            except DuplicateDeploymentError:
                continue  # accepted before: the retained state came again
            except RefusalError as exc:
                self._refused(exc, model=None)

    async def stop(self) -> None:
        """Cancel every worker (the journals let the next start finish their work)."""
        for task in self._workers.values():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._workers.values(), return_exceptions=True)
        self._workers.clear()
        await self.shadows.close()

    def _queue_for(self, model: str, envelope: bytes) -> None:
        self.updater(model)
        queue = self._pending.get(model)
        if queue is None:
            queue = self._pending[model] = asyncio.Queue(maxsize=1)
        # Only the newest deployment of a model matters: replace whatever still waits.
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
        queue.put_nowait(envelope)
        if model not in self._workers:
            self._workers[model] = asyncio.create_task(self._work(model), name=f"update {model}")

    async def _work(self, model: str) -> None:
        queue = self._pending[model]
        while True:
            envelope = await queue.get()
            try:
                await self._handle(model, envelope)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad deployment must not end the model's worker
                logger.exception("%s: handling a desired deployment failed", model)

    async def _handle(self, model: str, envelope: bytes) -> None:
        updater = self.updaters[model]
        try:
            verified = self._verify(envelope)
            if verified.deployment.model != model:
                raise ModelMismatchError(
                    f"deployment {verified.deployment.sequence} is of "
                    f"{verified.deployment.model}, not {model}"
                )
        except DuplicateDeploymentError:
            return
        except RefusalError as exc:
            self._refused(exc, model=model)
            return
        sequence = verified.deployment.sequence
        if verified.deployment.shadow is not None:
            # Serving does not change: the order is accepted and the shadow runs beside it.
            self.trust.accept_deployment(verified)
            updater.deployment_sequence = sequence
            self.shadows.order(verified, envelope)
            self.reporter.state_changed()
            return
        # A release or a removal of the model ends its shadow first.
        self.shadows.stop(model, reason="update" if verified.release else "removed")
        if verified.release is None:
            updater.remove(verified)
            # Nothing of the model is left: its updater goes too (a later deployment of
            # it makes a new one), and its worker stays until let go of.
            del self.updaters[model]
            shutil.rmtree(updater.paths.journal.parent, ignore_errors=True)
            return
        logger.info("accepted deployment %d: %s v%d", sequence, model, verified.release.version)
        try:
            await updater.apply(verified)
        except AgentError as exc:
            logger.error("%s: deployment %d stopped: %s", model, sequence, exc)

    def _verify(self, envelope: bytes) -> VerifiedDeployment:
        return verify_deployment(
            envelope, self.trust.state, device_id=self.config.device_id, now=self.clock.now()
        )

    def _refused(self, exc: RefusalError, *, model: str | None) -> None:
        logger.warning("refused a deployment: %s: %s", exc.reason, exc)
        self.reporter.event(
            "deployment_refused",
            journal=None,
            model=model,
            reason=exc.reason,
            details={"error": str(exc)},
        )

    def _let_go_of_empty_models(self) -> None:
        """Forget the models that hold nothing and have nothing waiting, workers included."""
        for model in set(self.updaters) | set(self._workers):
            updater = self.updaters.get(model)
            queue = self._pending.get(model)
            if (updater is not None and updater.holds_a_model) or (
                queue is not None and not queue.empty()
            ):
                continue
            task = self._workers.pop(model, None)
            if task is not None:
                task.cancel()  # it waits on its empty queue
            self._pending.pop(model, None)
            self.updaters.pop(model, None)

    # -- what the device reports -----------------------------------------------------

    @property
    def phase(self) -> str:
        return busiest_phase([updater.phase for updater in self.updaters.values()])

    def model_states(self) -> list[ModelState]:
        """Every model that holds a version or has an update under way, by name."""
        states = []
        for model in sorted(self.updaters):
            updater = self.updaters[model]
            if not updater.holds_a_model and updater.phase == "idle":
                continue
            states.append(
                ModelState(
                    model=model,
                    phase=updater.phase,
                    active=updater.release_of(updater.store.current_sha256()),
                    previous=updater.release_of(updater.store.previous_sha256()),
                    last_good=updater.last_good(),
                    deployment_sequence=updater.deployment_sequence
                    or self.trust.state.deployment_sequence(model)
                    or None,
                )
            )
        return states

    def diagnostics(self) -> dict[str, dict[str, object]]:
        return {
            model: {
                "phase": updater.phase,
                "current_sha256": updater.store.current_sha256(),
                "previous_sha256": updater.store.previous_sha256(),
            }
            for model, updater in sorted(self.updaters.items())
        }
