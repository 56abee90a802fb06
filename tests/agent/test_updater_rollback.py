"""The updater's rollback, in process: the store, what serves, and the one final event.

Each row sets up a device (the models activated before, whether the new model's switch
happened, whether this process saw it or restarted since), then finishes a journal that
says ``rolling_back``, as the updater does after a failed probation and after recovery
from a crash. Real ONNX models are loaded and served; nothing is fetched.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.clock import SystemClock
from agent.config import AgentConfig
from agent.serving.host import ServingHost
from agent.update.machine import MAX_TRANSITIONS_PER_DEPLOYMENT, Journal, UpdateState
from agent.update.state_files import ReleaseIndex, TrustKeeper, load_journal
from agent.update.store import ModelStore
from agent.update.trust_state import TrustState
from agent.update.updater import Updater, UpdaterPaths
from protocol import Artifact, Release, TensorSpec
from tensors import RuntimeOptions
from tests.agent.e2e.models import affine_model
from tests.factories import Keyring, make_release

FINAL_EVENTS = ("committed", "failed", "rolled_back")
MODEL = "affine"


@dataclass
class RecordingReporter:
    events: list[tuple[str, str | None]] = field(default_factory=list)
    seq: int = 0

    def reserve_event_seq(self) -> int:
        self.seq += 1
        return self.seq

    def event(
        self,
        event_type: str,
        *,
        journal: Journal | None,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
        seq: int | None = None,
        model: str | None = None,
    ) -> None:
        self.events.append((event_type, reason))

    def state_changed(self) -> None:
        pass

    def finals(self) -> list[tuple[str, str | None]]:
        return [event for event in self.events if event[0] in FINAL_EVENTS]


class NoFetcher:
    async def download(
        self,
        url: str,
        destination: Path,
        *,
        expected_length: int,
        expected_sha256: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        raise AssertionError("a rollback downloads nothing")


async def no_check(
    model: Path, bundle: Path, release: Release, latency_budget_ms: float | None
) -> None:
    raise AssertionError("a rollback checks no model")


@dataclass
class Device:
    tmp_path: Path
    keyring: Keyring
    releases: dict[str, Release]
    reporter: RecordingReporter = field(default_factory=RecordingReporter)

    def __post_init__(self) -> None:
        self.data_dir = self.tmp_path / "data"
        self.store = ModelStore(self.data_dir / "store", MODEL)
        for release in self.releases.values():
            model = self.tmp_path / "models" / release.artifact.filename
            self.store.stage(release.artifact.sha256, release.artifact.filename, model)

    def boot(self, serving: ServingHost | None = None, model: str = MODEL) -> Updater:
        """A new agent process on this device's files: nothing serves yet (unless a
        ``serving`` host of another model's updater is shared)."""
        config = AgentConfig(
            device_id="dev-0001", data_dir=self.data_dir, trust_root=self.tmp_path / "root"
        )
        releases = ReleaseIndex(self.data_dir / "releases.json")
        for release in self.releases.values():
            releases.add(release)
        trust = TrustState.initial(self.keyring.signed_trust_root().to_bytes())
        return Updater(
            config,
            model=model,
            paths=UpdaterPaths.for_model(self.data_dir, model),
            trust=TrustKeeper(self.data_dir / "trust.json", trust),
            releases=releases,
            store=self.store if model == MODEL else ModelStore(self.store.root, model),
            fetcher=NoFetcher(),
            check_model=no_check,
            reporter=self.reporter,
            clock=SystemClock(),
            serving=serving or ServingHost(options=RuntimeOptions(), window_s=1.0, port=0),
        )

    def sha(self, name: str) -> str:
        return self.releases[name].artifact.sha256


def _release(tmp_path: Path, name: str, bias: float, version: int) -> Release:
    path = affine_model(tmp_path / "models" / f"{name}.onnx", bias)
    data = path.read_bytes()
    spec = [TensorSpec(name="x", datatype="FP32", shape=[-1, 4])]
    return make_release(
        model="affine",
        version=version,
        artifact=Artifact(
            sha256=hashlib.sha256(data).hexdigest(),
            length=len(data),
            format="onnx",
            filename=path.name,
        ),
        inputs=spec,
        outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 4])],
    )


@pytest.fixture
def device(tmp_path: Path, keyring: Keyring) -> Device:
    (tmp_path / "models").mkdir()
    releases = {"old": _release(tmp_path, "old", 1.0, 1), "new": _release(tmp_path, "new", 2.0, 2)}
    return Device(tmp_path, keyring, releases)


def _rolling_back(device: Device, reason: str) -> Journal:
    return Journal(7, UpdateState.ROLLING_BACK, device.releases["new"].ref(), 6, reason)


@dataclass(frozen=True)
class Case:
    had_old: bool  # a model was committed before this deployment
    switched: bool  # the store switched to the new model before the rollback began
    restarted: bool  # the agent restarted since (a crash), else it saw the switch itself
    keeps: str | None  # the model current (and serving) after the rollback


CASES = {
    "first_model_failed_probation": Case(False, True, False, keeps=None),
    "first_model_crash_in_probation": Case(False, True, True, keeps=None),
    "first_model_crash_in_activating_before_the_switch": Case(False, False, True, keeps=None),
    "failed_probation": Case(True, True, False, keeps="old"),
    "crash_in_probation": Case(True, True, True, keeps="old"),
    "crash_in_activating_before_the_switch": Case(True, False, True, keeps="old"),
    "load_failed_in_activating_before_the_switch": Case(True, False, False, keeps="old"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_rollback_keeps_the_model_that_served_before_or_none(device: Device, case: Case) -> None:
    updater = device.boot()
    if case.had_old:
        device.store.activate(device.sha("old"))
        asyncio.run(updater.serve_current())
    if case.switched:
        asyncio.run(updater._activate(device.releases["new"]))
    served_before = updater.serving_now
    if case.restarted:
        updater = device.boot()
        if case.had_old and not case.switched:
            asyncio.run(updater.serve_current())  # recovery finds the old model serving
            served_before = updater.serving_now

    journal = asyncio.run(updater.resume(_rolling_back(device, "nonfinite_rate")))

    assert (journal.state, journal.final_reported) == (UpdateState.ROLLED_BACK, True)
    assert load_journal(UpdaterPaths.for_model(device.data_dir, MODEL).journal) == journal
    assert device.reporter.finals() == [("rolled_back", "nonfinite_rate")]
    kept = None if case.keeps is None else device.sha(case.keeps)
    assert device.store.current_sha256() == kept
    serving = updater.serving_now
    if kept is None:
        assert serving is None
        assert MODEL not in updater.serving.servers  # it left the inference API
    else:
        assert serving is not None
        assert serving.path.parent == device.store.model_dir(kept)
        if not case.switched:
            assert serving is served_before  # never swapped out, not even reloaded
    # The rejected artifact is no longer referenced: collected.
    assert not device.store.model_dir(device.sha("new")).exists()
    assert ModelStore(device.store.root, MODEL).current_sha256() == kept  # so after a restart


def test_first_model_rolled_back_in_process_answers_not_ready(device: Device) -> None:
    updater = device.boot()
    asyncio.run(updater._activate(device.releases["new"]))
    server = updater.serving.servers.get(MODEL)
    assert server is not None
    assert server.ready

    asyncio.run(updater.resume(_rolling_back(device, "drift")))

    assert not server.ready
    assert not updater.serving.api.ready


def test_rollback_that_keeps_failing_reports_its_final_event_at_the_cap(device: Device) -> None:
    updater = device.boot()
    device.store.activate(device.sha("old"))
    asyncio.run(updater._activate(device.releases["new"]))
    # The model to return to vanished: every attempt fails with store_error.
    shutil.rmtree(device.store.model_dir(device.sha("old")))

    journal = asyncio.run(updater.resume(_rolling_back(device, "error_rate")))

    assert (journal.state, journal.last_error) == (UpdateState.ROLLED_BACK, "transition_cap")
    assert journal.final_reported
    assert journal.transitions == MAX_TRANSITIONS_PER_DEPLOYMENT
    assert device.reporter.finals() == [("rolled_back", "transition_cap")]
    assert ("phase", "store_error") in device.reporter.events


def test_one_models_rollback_leaves_the_other_model_serving(device: Device, tmp_path: Path) -> None:
    first = device.boot()
    other = device.boot(first.serving, model="shift")
    shift = _release(tmp_path, "shift", 10.0, 1).model_copy(update={"model": "shift"})
    model_file = tmp_path / "models" / shift.artifact.filename
    other.store.stage(shift.artifact.sha256, shift.artifact.filename, model_file)
    other.releases.add(shift)
    asyncio.run(other._activate(shift))
    asyncio.run(first._activate(device.releases["new"]))

    asyncio.run(first.resume(_rolling_back(device, "drift")))

    assert first.serving_now is None
    assert other.serving_now is not None
    assert other.store.current_sha256() == shift.artifact.sha256
    assert first.serving.api.ready  # the model that should serve does
