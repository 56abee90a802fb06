"""What a shadow model costs the requests a device answers (issue 17: p50 <= 1.05x).

Run from the repository root: ``.venv/bin/python bench/shadow_overhead.py``. SqueezeNet
from the onnx package (1x3x224x224 FP32 in), served by ``ModelServer`` with statistics on
and the agent's default threads; the shadow is a second copy of the same network (so its
figures must read agreement 1 and a latency ratio near 1), run by ``ShadowRunner`` at the
default budget, 0.2 of the time, at the lowest CPU priority, on one thread, with a
one-thread copy of the serving model as the reference of its CPU-time ratio.

Two kinds of traffic, each in interleaved rounds with and without the shadow (before a
round without it, the shadow finishes what it runs):

- camera: a request every 50 ms (20 frames a second), what a device serves;
- saturated: requests back to back from one thread, the worst case for the serving model.

Printed: p50 and p95 of the served requests with and without the shadow and their ratio
(the target is a p50 ratio <= 1.05 at the default budget), how many requests the shadow
ran or skipped, the share of time it ran, and the CPU-time ratio its own figures give
(the candidate's median over the reference's on the same samples; 1.0 is right, as the
two are the same network). Compare ratios, not absolute times.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_inference import Timing, interleaved, stats_recorder

from agent.backends import load_backend, physical_cores
from agent.serving.server import LoadedVersion, ModelServer
from agent.shadow.runner import ShadowRunner
from protocol import DEFAULT_SHADOW_CPU_FRACTION, ReleaseRef, histogram_quantile
from tensors import RuntimeOptions
from tests.model_factory import onnx_reference_models

ROUNDS = 6
CAMERA_REQUESTS = 60
CAMERA_INTERVAL_S = 0.05
SATURATED_REQUESTS = 120
TARGET_P50_RATIO = 1.05


def squeezenet() -> Path:
    return next(p for p in onnx_reference_models() if "squeezenet" in p.name.lower())


def main() -> None:
    path = squeezenet()
    threads = physical_cores()
    options = RuntimeOptions(intra_op_threads=threads)
    server = ModelServer("squeezenet", options=options, load_backend=load_backend)
    serving = server.load(path, "onnx", version="1", observer=stats_recorder())
    server.swap(serving)
    # As the agent's ShadowKeeper loads them: one thread each, in the shadow's thread.
    one_thread = RuntimeOptions(intra_op_threads=1, inter_op_threads=1)
    candidate = ModelServer("squeezenet", options=one_thread, load_backend=load_backend)
    runner = ShadowRunner(
        ReleaseRef(model="squeezenet", version=2, sha256="0" * 64),
        lambda: candidate.load(path, "onnx", version="2"),
        load_reference=lambda: candidate.load(path, "onnx", version="1"),
        max_cpu_fraction=DEFAULT_SHADOW_CPU_FRACTION,
    )
    runner.start()
    rng = np.random.default_rng(0)
    frames = [rng.standard_normal((1, 3, 224, 224)).astype(np.float32) for _ in range(8)]
    name = serving.signature.inputs[0].name
    print(
        f"SqueezeNet ({path.name}), {threads} intra-op threads, shadow budget "
        f"{DEFAULT_SHADOW_CPU_FRACTION} of the time at {runner.priority} priority"
    )
    for label, requests, interval_s in (
        ("camera, 20 frames/s", CAMERA_REQUESTS, CAMERA_INTERVAL_S),
        ("saturated, back to back", SATURATED_REQUESTS, 0.0),
    ):
        runner.take_window()  # figures of this kind of traffic only
        busy_before = runner.busy_s
        started = time.perf_counter()
        timings = interleaved(
            {
                "without shadow": _round(serving, runner, None, name, frames, requests, interval_s),
                "with shadow": _round(serving, runner, runner, name, frames, requests, interval_s),
            },
            ROUNDS,
        )
        elapsed_s = time.perf_counter() - started
        window = runner.take_window()
        _report(label, timings, window, (runner.busy_s - busy_before) / elapsed_s)
    runner.close()


def _round(
    serving: LoadedVersion,
    runner: ShadowRunner,
    tap: ShadowRunner | None,
    name: str,
    frames: list[np.ndarray],
    requests: int,
    interval_s: float,
) -> Callable[[], list[float]]:
    def run() -> list[float]:
        _wait_idle(runner)
        serving.tap(tap)
        samples = []
        next_at = time.perf_counter()
        for index in range(requests):
            started = time.perf_counter()
            serving.infer({name: frames[index % len(frames)]})
            samples.append(time.perf_counter() - started)
            if interval_s:
                next_at += interval_s
                time.sleep(max(0.0, next_at - time.perf_counter()))
        serving.tap(None)
        return samples

    return run


def _wait_idle(runner: ShadowRunner) -> None:
    deadline = time.monotonic() + 10
    while runner.busy and time.monotonic() < deadline:
        time.sleep(0.001)


def _report(label: str, timings: dict[str, Timing], window: object, busy_share: float) -> None:
    without, with_shadow = timings["without shadow"], timings["with shadow"]
    ratio = with_shadow.p50_s / without.p50_s
    print(f"\n{label}:")
    for name, timing in timings.items():
        print(f"  {name:15s} p50 {timing.p50_s * 1e3:7.2f} ms   p95 {timing.p95_s * 1e3:7.2f} ms")
    met = "met" if ratio <= TARGET_P50_RATIO else "NOT met"
    print(f"  p50 with/without: {ratio:.3f}x (target <= {TARGET_P50_RATIO}x: {met})")
    if window is None:
        print("  the shadow saw no request")
        return
    from protocol import ShadowWindow

    assert isinstance(window, ShadowWindow)
    shadow_p50 = histogram_quantile(window.cpu_counts, 0.5)
    serving_p50 = histogram_quantile(window.serving_cpu_counts, 0.5)
    agreement = window.agreed_rows / window.compared_rows if window.compared_rows else None
    print(
        f"  shadow ran {window.samples} requests, skipped {window.skipped}; it ran "
        f"{busy_share:.1%} of the time (budget {DEFAULT_SHADOW_CPU_FRACTION:.0%})"
    )
    if shadow_p50 is not None and serving_p50:
        print(
            f"  its figures: agreement {agreement}, CPU-time ratio {shadow_p50 / serving_p50:.2f} "
            f"(median {shadow_p50:.2f} ms vs {serving_p50:.2f} ms; the same network: 1.0 is right)"
        )


if __name__ == "__main__":
    main()
