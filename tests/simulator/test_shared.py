"""The shortcuts simulated devices share: one runtime session per stored artifact, one
model check per artifact hash (verdict and failure alike), and slowed inference."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pytest

from agent.update.sandbox import SandboxLimits
from protocol import Release
from protocol.release import Artifact
from simulator import shared
from simulator.shared import SharedBackends, SharedModelCheck, Shortcuts, SlowBackend
from tensors import Array, RuntimeOptions, TensorSpec
from tests.factories import make_release
from tests.model_factory import small_cnn

SHA_A, SHA_B = "a" * 64, "b" * 64

# -- SlowBackend ----------------------------------------------------------------------------


@dataclass
class FakeBackend:
    runs: list[Mapping[str, Array]] = field(default_factory=list)

    @property
    def runtime(self) -> str:
        return "fakeruntime 1.0"

    @property
    def platform(self) -> str:
        return "onnxruntime"

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("x", "FP32", (-1, 4)),)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("y", "FP32", (-1, 2)),)

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        self.runs.append(feeds)
        return {"y": np.array([[0.25, 0.75]], dtype=np.float32)}


@dataclass
class FakeTime:
    """Stands in for ``time`` inside ``simulator.shared``: each run takes 0.5 s."""

    now: float = 100.0
    slept: list[float] = field(default_factory=list)

    def perf_counter(self) -> float:
        self.now += 0.25
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_slow_backend_forwards_the_inner_backends_description() -> None:
    inner = FakeBackend()

    slow = SlowBackend(inner, 3.0)

    assert slow.runtime == inner.runtime
    assert slow.platform == inner.platform
    assert slow.inputs == inner.inputs
    assert slow.outputs == inner.outputs


def test_slow_backend_runs_the_inner_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared, "time", FakeTime())
    inner = FakeBackend()
    feeds = {"x": np.zeros((1, 4), dtype=np.float32)}

    outputs = SlowBackend(inner, 2.0).run(feeds)

    assert inner.runs == [feeds]
    np.testing.assert_array_equal(outputs["y"], [[0.25, 0.75]])


@pytest.mark.parametrize(("speed_factor", "extra_s"), [(1.0, 0.0), (2.0, 0.25), (5.0, 1.0)])
def test_slow_backend_sleeps_the_extra_time(
    monkeypatch: pytest.MonkeyPatch, speed_factor: float, extra_s: float
) -> None:
    clock = FakeTime()  # the inner run takes 0.25 s on this clock
    monkeypatch.setattr(shared, "time", clock)

    SlowBackend(FakeBackend(), speed_factor).run({"x": np.zeros((1, 4), dtype=np.float32)})

    assert clock.slept == [pytest.approx(extra_s)]


# -- SharedBackends -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_cnn(tmp_path_factory.mktemp("model"))


def stored(model: Path, root: Path, device: str, sha256: str) -> Path:
    """The model where ``device``'s store keeps it: models/sha256-<hex>/model.onnx."""
    path = root / device / "models" / f"sha256-{sha256}" / "model.onnx"
    path.parent.mkdir(parents=True)
    shutil.copyfile(model, path)
    return path


def test_same_artifact_directory_shares_one_backend(model: Path, tmp_path: Path) -> None:
    backends = SharedBackends()

    first = backends.load(stored(model, tmp_path, "dev-1", SHA_A), "onnx", RuntimeOptions())
    second = backends.load(stored(model, tmp_path, "dev-2", SHA_A), "onnx", RuntimeOptions())

    assert first is second
    assert backends.sessions == 1


def test_different_artifact_directories_get_their_own_backends(model: Path, tmp_path: Path) -> None:
    backends = SharedBackends()

    first = backends.load(stored(model, tmp_path, "dev-1", SHA_A), "onnx", RuntimeOptions())
    second = backends.load(stored(model, tmp_path, "dev-1", SHA_B), "onnx", RuntimeOptions())

    assert first is not second
    assert backends.sessions == 2


def test_shared_backend_runs_the_model(model: Path, tmp_path: Path) -> None:
    backend = SharedBackends().load(stored(model, tmp_path, "d", SHA_A), "onnx", RuntimeOptions())

    outputs = backend.run({"input": np.zeros((1, 1, 8, 8), dtype=np.float32)})

    assert outputs["probabilities"].shape == (1, 10)


def test_loader_gives_a_normal_device_the_shared_backend(model: Path, tmp_path: Path) -> None:
    backends = SharedBackends()
    path = stored(model, tmp_path, "dev-1", SHA_A)

    loaded = backends.loader(1.0)(path, "onnx", RuntimeOptions())

    assert loaded is backends.load(path, "onnx", RuntimeOptions())


def test_loader_slows_the_shared_backend_for_a_slow_device(model: Path, tmp_path: Path) -> None:
    backends = SharedBackends()
    path = stored(model, tmp_path, "dev-1", SHA_A)

    loaded = backends.loader(2.5)(path, "onnx", RuntimeOptions())

    assert isinstance(loaded, SlowBackend)
    assert loaded.inputs == backends.load(path, "onnx", RuntimeOptions()).inputs
    assert backends.sessions == 1


# -- SharedModelCheck -------------------------------------------------------------------------


BUNDLE = Path("/bundles/check-bundle.npz")


def release(sha256: str) -> Release:
    return make_release(
        artifact=Artifact(sha256=sha256, length=10, format="onnx", filename="model.onnx")
    )


@dataclass
class CountingCheck:
    """Replaces the sandboxed check: counts runs and holds them until released."""

    verdict: object = "accepted"
    error: Exception | None = None
    calls: list[str] = field(default_factory=list)
    go: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(
        self, path: Path, bundle: Path, release: Release, budget_ms: float | None
    ) -> object:
        self.calls.append(release.artifact.sha256)
        await self.go.wait()
        if self.error is not None:
            raise self.error
        return self.verdict


def checker(monkeypatch: pytest.MonkeyPatch, fake: CountingCheck) -> SharedModelCheck:
    check = SharedModelCheck(SandboxLimits(memory_bytes=1 << 30, cpu_s=10, wall_s=10.0))
    # What is under test is the sharing; the sandboxed check has its own tests.
    monkeypatch.setattr(check, "_check", fake)
    return check


def test_concurrent_callers_share_one_check(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> tuple[list[object], CountingCheck]:
        fake = CountingCheck(verdict=object())
        check = checker(monkeypatch, fake)
        callers = [
            asyncio.create_task(check(Path(f"/dev-{i}/model.onnx"), BUNDLE, release(SHA_A), 50.0))
            for i in range(5)
        ]
        await asyncio.sleep(0)
        fake.go.set()
        verdicts = await asyncio.gather(*callers)
        verdicts.append(await check(Path("/late/model.onnx"), BUNDLE, release(SHA_A), 50.0))
        return verdicts, fake

    verdicts, fake = asyncio.run(scenario())

    assert fake.calls == [SHA_A]
    assert all(verdict is fake.verdict for verdict in verdicts)


def test_concurrent_callers_share_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    failure = RuntimeError("model rejected in the sandbox")

    async def scenario() -> tuple[list[object], CountingCheck]:
        fake = CountingCheck(error=failure)
        check = checker(monkeypatch, fake)
        callers = [
            asyncio.create_task(check(Path(f"/dev-{i}/model.onnx"), BUNDLE, release(SHA_A), None))
            for i in range(3)
        ]
        await asyncio.sleep(0)
        fake.go.set()
        outcomes = list(await asyncio.gather(*callers, return_exceptions=True))
        try:
            await check(Path("/late/model.onnx"), BUNDLE, release(SHA_A), None)
        except RuntimeError as exc:
            outcomes.append(exc)
        return outcomes, fake

    outcomes, fake = asyncio.run(scenario())

    assert fake.calls == [SHA_A]
    assert outcomes == [failure] * 4


@pytest.mark.parametrize(
    ("first", "second"),
    [((SHA_A, 50.0), (SHA_B, 50.0)), ((SHA_A, 50.0), (SHA_A, 80.0))],
    ids=["other-artifact", "other-latency-budget"],
)
def test_other_artifact_or_budget_is_checked_again(
    monkeypatch: pytest.MonkeyPatch,
    first: tuple[str, float],
    second: tuple[str, float],
) -> None:
    async def scenario() -> CountingCheck:
        fake = CountingCheck()
        fake.go.set()
        check = checker(monkeypatch, fake)
        await check(Path("/a/model.onnx"), BUNDLE, release(first[0]), first[1])
        await check(Path("/b/model.onnx"), BUNDLE, release(second[0]), second[1])
        return fake

    assert len(asyncio.run(scenario()).calls) == 2


def test_one_callers_cancellation_does_not_cancel_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> tuple[object, CountingCheck]:
        fake = CountingCheck()
        check = checker(monkeypatch, fake)
        crashed = asyncio.create_task(check(Path("/a/model.onnx"), BUNDLE, release(SHA_A), None))
        survivor = asyncio.create_task(check(Path("/b/model.onnx"), BUNDLE, release(SHA_A), None))
        await asyncio.sleep(0)
        crashed.cancel()  # a simulated kill of the first device
        await asyncio.sleep(0)
        fake.go.set()
        return await survivor, fake

    verdict, fake = asyncio.run(scenario())

    assert verdict == "accepted"
    assert fake.calls == [SHA_A]


def test_every_shortcut_that_is_on_is_named() -> None:
    names = [f.name for f in fields(Shortcuts)]

    assert len(Shortcuts(**dict.fromkeys(names, True)).names()) == len(names)
    assert Shortcuts(**dict.fromkeys(names, False)).names() == []
    assert len(Shortcuts(**{**dict.fromkeys(names, False), "shared_sessions": True}).names()) == 1
