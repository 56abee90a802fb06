"""The sandboxed pre-activation check, with real models in a real child process.

Each test names what a model does wrong and asserts the error class and that its
message carries the numbers an operator needs. No test asserts how fast anything is:
the latency test pits a model of tens of milliseconds against a 2 ms budget.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.errors import (
    CheckBundleError,
    GoldenMismatchError,
    LatencyBudgetError,
    ModelCheckError,
    ModelLoadError,
    NonFiniteOutputError,
    SandboxKilledError,
    SignatureMismatchError,
)
from agent.update.sandbox import SandboxLimits, SandboxReport, check_model
from protocol import Release, TensorSpec
from tensors import GoldenCase
from tests.agent.sandbox.conftest import (
    LIMITS,
    Digits,
    log_model,
    matmul_loop_model,
    memory_hog_model,
    release_for,
)
from tests.check_bundles import written_bundle

XY: dict[str, Any] = {
    "inputs": [TensorSpec(name="x", datatype="FP32", shape=[1, 4])],
    "outputs": [TensorSpec(name="y", datatype="FP32", shape=[1, 4])],
}
LOOP_IO: dict[str, Any] = {
    "inputs": [TensorSpec(name="x", datatype="FP32", shape=[256, 512])],
    "outputs": [TensorSpec(name="y", datatype="FP32", shape=[256, 512])],
}


def check(
    path: Path,
    release: Release,
    *,
    budget_ms: float | None = None,
    limits: SandboxLimits = LIMITS,
    **kwargs: Any,
) -> SandboxReport:
    return asyncio.run(
        check_model(
            path,
            release,
            check_bundle=written_bundle(release.check_bundle),
            latency_budget_ms=budget_ms,
            limits=limits,
            **kwargs,
        )
    )


def test_digits_model_passes_its_golden_cases(digits: Digits) -> None:
    report = check(digits.path, digits.release(), budget_ms=1000.0)

    assert report.golden_cases == 1
    assert report.runtime.startswith("onnxruntime ")
    assert 0 < report.latency_ms_p50 <= report.latency_ms_max


def test_tflite_model_passes_its_golden_cases(tflite_release: tuple[Path, Release]) -> None:
    path, release = tflite_release

    report = check(path, release)

    assert report.golden_cases == 1
    assert report.runtime.startswith(("litert ", "tflite_runtime "))


def test_release_without_golden_cases_still_runs_the_model(digits: Digits) -> None:
    report = check(digits.path, digits.release(golden=[]))

    assert report.golden_cases == 0
    assert report.latency_ms_max > 0


def test_wrong_golden_output_names_the_output_and_the_error(digits: Digits) -> None:
    perturbed = digits.probabilities.copy()
    perturbed[2, 7] += 0.5

    with pytest.raises(
        GoldenMismatchError, match=r"'probabilities' is off by up to 0\.5 at \[2, 7\]"
    ):
        check(digits.path, digits.release(golden=[digits.golden(perturbed)]))


def test_golden_output_within_tolerance_passes(digits: Digits) -> None:
    nudged = digits.probabilities + np.float32(5e-5)  # under atol 1e-4

    assert check(digits.path, digits.release(golden=[digits.golden(nudged)])).golden_cases == 1


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            [TensorSpec(name="input", datatype="FP32", shape=[-1, 32])],
            r"input 'input' is FP32\[-1, 64\] in the model, FP32\[-1, 32\] in the release",
        ),
        (
            [TensorSpec(name="input", datatype="FP64", shape=[-1, 64])],
            r"FP32\[-1, 64\] in the model, FP64\[-1, 64\] in the release",
        ),
        (
            [TensorSpec(name="pixels", datatype="FP32", shape=[-1, 64])],
            r"the model's inputs are \['input'\], the release declares \['pixels'\]",
        ),
    ],
    ids=["shape", "datatype", "name"],
)
def test_model_whose_signature_differs_from_the_release_is_refused(
    digits: Digits, inputs: list[TensorSpec], message: str
) -> None:
    with pytest.raises(SignatureMismatchError, match=message):
        check(digits.path, digits.release(inputs=inputs, golden=[]))


def test_missing_output_in_the_release_is_a_signature_mismatch(digits: Digits) -> None:
    outputs = [TensorSpec(name="label", datatype="INT64", shape=[-1])]

    with pytest.raises(SignatureMismatchError, match=r"\['label', 'probabilities'\]"):
        check(digits.path, digits.release(outputs=outputs, golden=[]))


def test_golden_input_that_does_not_fit_the_signature_is_refused(digits: Digits) -> None:
    case = GoldenCase(
        inputs={"input": digits.inputs[:, :32]}, expected_outputs={"label": digits.label}
    )

    with pytest.raises(
        SignatureMismatchError, match=r"golden case 0: input 'input' is FP32\[4, 32\]"
    ):
        check(digits.path, digits.release(golden=[case]))


def test_nan_output_is_refused(tmp_path: Path) -> None:
    path = log_model(tmp_path)
    x = np.array([[-1.0, 0.0, 1.0, 2.0]], dtype=np.float32)
    case = GoldenCase(inputs={"x": x}, expected_outputs={"y": np.zeros_like(x)})

    with pytest.raises(
        NonFiniteOutputError, match=r"'y' has 2 non-finite values of 4 \(1 NaN, 1 inf"
    ):
        check(path, release_for(path, golden=[case], **XY))


def test_non_finite_output_on_a_zero_input_is_refused_without_golden_cases(
    tmp_path: Path,
) -> None:
    path = log_model(tmp_path)  # log(0) = -inf

    with pytest.raises(NonFiniteOutputError, match="a zero input: output 'y' has 4 non-finite"):
        check(path, release_for(path, **XY))


def test_model_slower_than_its_budget_is_refused(tmp_path: Path) -> None:
    # 64 turns of a 256x512 @ 512x512 MatMul: ~4 GFLOP, tens of ms on one thread.
    path = matmul_loop_model(tmp_path, iterations=64, name="slow")

    with pytest.raises(LatencyBudgetError, match=r"over the budget of 2\.000 ms \(max .* 5 runs\)"):
        check(path, release_for(path, **LOOP_IO), budget_ms=2.0, timed_runs=5)


def test_malformed_model_file_is_a_load_error(tmp_path: Path, digits: Digits) -> None:
    path = tmp_path / "random.onnx"
    path.write_bytes(b"\x08" + np.random.default_rng(0).bytes(4095))

    with pytest.raises(ModelLoadError, match=r"onnxruntime cannot load random\.onnx"):
        check(path, digits.release(golden=[]))


def test_malformed_tflite_file_is_a_load_error(
    tmp_path: Path, tflite_release: tuple[Path, Release]
) -> None:
    path = tmp_path / "fake.tflite"
    path.write_bytes(b"\x00\x00\x00\x00TFL3" + bytes(100))

    with pytest.raises(ModelLoadError, match=r"LiteRT cannot load fake\.tflite"):
        check(path, tflite_release[1])


def test_memory_hog_is_stopped_by_the_memory_limit(tmp_path: Path, digits: Digits) -> None:
    path = memory_hog_model(tmp_path)
    shape = np.array([16384, 16384], dtype=np.int64)  # 1 GiB of float32 ones
    case = GoldenCase(
        inputs={"shape": shape},
        expected_outputs={"total": np.array(2.0**28, dtype=np.float32)},
    )
    release = release_for(
        path,
        inputs=[TensorSpec(name="shape", datatype="INT64", shape=[2])],
        outputs=[TensorSpec(name="total", datatype="FP32", shape=[])],
        golden=[case],
    )

    with pytest.raises(ModelCheckError) as info:
        check(path, release, limits=SandboxLimits(memory_bytes=512 << 20, cpu_s=30, wall_s=60))

    assert isinstance(info.value, ModelLoadError | SandboxKilledError)
    # The agent process is unharmed and checks the next model as usual.
    assert check(digits.path, digits.release()).golden_cases == 1


def test_limit_too_small_to_start_is_a_sandbox_kill(digits: Digits) -> None:
    with pytest.raises(SandboxKilledError, match=r"crashed with exit code|killed|aborted"):
        check(digits.path, digits.release(), limits=SandboxLimits(32 << 20, 30, 60))


def test_endless_model_is_killed_at_the_wall_clock_limit(tmp_path: Path) -> None:
    path = matmul_loop_model(tmp_path, iterations=10**12, name="endless")

    with pytest.raises(SandboxKilledError, match="did not finish within 2 s"):
        check(path, release_for(path, **LOOP_IO), limits=SandboxLimits(1 << 30, 30, 2.0))


def test_endless_model_is_killed_at_the_cpu_limit(tmp_path: Path) -> None:
    path = matmul_loop_model(tmp_path, iterations=10**12, name="endless")

    with pytest.raises(SandboxKilledError, match=r"CPU-time limit: SIGXCPU .*1 s of CPU"):
        check(path, release_for(path, **LOOP_IO), limits=SandboxLimits(1 << 30, 1, 30.0))


def test_cancelled_check_leaves_no_child_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = matmul_loop_model(tmp_path, iterations=10**12, name="endless")
    started: list[asyncio.subprocess.Process] = []
    real_exec = asyncio.create_subprocess_exec

    async def recording_exec(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        process = await real_exec(*args, **kwargs)
        started.append(process)
        return process

    monkeypatch.setattr(asyncio, "create_subprocess_exec", recording_exec)

    async def cancel_soon() -> None:
        release = release_for(path, **LOOP_IO)
        task = asyncio.create_task(
            check_model(
                path,
                release,
                check_bundle=written_bundle(release.check_bundle),
                latency_budget_ms=None,
                limits=LIMITS,
            )
        )
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_soon())

    [process] = started
    assert process.returncode == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)


def test_unreadable_check_bundle_is_refused_with_its_reason(tmp_path: Path, digits: Digits) -> None:
    release = digits.release()
    garbage = tmp_path / "bundle.npz"
    garbage.write_bytes(b"PK\x03\x04 not a zip at all")

    with pytest.raises(CheckBundleError, match="check bundle does not read") as info:
        asyncio.run(
            check_model(
                digits.path, release, check_bundle=garbage, latency_budget_ms=None, limits=LIMITS
            )
        )
    assert info.value.reason == "check_bundle_invalid"
