"""What sample capture costs on the request path; prints a markdown table.

Run from the repository root: ``.venv/bin/python bench/capture_overhead.py``.

``StatsRecorder.record`` is called as the serving layer calls it (a request's inputs and
fresh outputs), for a tabular classifier (1x64 float32 in, 1x10 probabilities out) and an
image classifier (1x3x224x224 float32 in, 1x1000x1x1 out, SqueezeNet's shapes), with:

- ``off``: no capture order (``recorder.capture`` is None);
- ``on, confident``: capture on, every request above the threshold (nothing is copied;
  one numpy pass over the request's scores);
- ``on, budget spent``: capture on, the hour's budget already used (nothing is copied);
- ``on, kept``: capture on and every request kept (its inputs copied), the budget
  raised so that it never runs out during the run.

Each figure is the median over rounds of the mean time per call of a round of 2,000
calls (16 for ``kept``: at most 32 samples wait between two flushes), with
``perf_counter``; the recorder's batch measurements are included, as in serving.
Compare the rows, not the absolute numbers, which depend on the machine.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from agent.clock import SystemClock
from agent.stats.capture import CaptureKeeper
from agent.stats.recorder import StatsRecorder

ROUNDS = 7
CALLS = 2000


def _probabilities(width: int, top: float, shape: tuple[int, ...]) -> np.ndarray:
    row = np.full(width, (1.0 - top) / (width - 1), dtype=np.float32)
    row[0] = top
    return row.reshape(shape)


def _time_per_call_us(
    recorder: StatsRecorder,
    inputs: dict[str, np.ndarray],
    scores: str,
    outputs: np.ndarray,
    keeper: CaptureKeeper | None,
    *,
    calls: int = CALLS,
    rounds: int = ROUNDS,
) -> float:
    means = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            recorder.record(
                latency_s=0.001, inputs=inputs, outputs={scores: outputs.copy()}, error=False
            )
        means.append((time.perf_counter() - start) / calls * 1e6)
        if keeper is not None:  # forget what was kept (outside the timing): room again
            for capture in keeper._captures.values():
                capture.take()
                capture._bytes = 0
                capture._kept_at.clear()
    return statistics.median(means)


def _case(
    name: str, inputs: dict[str, np.ndarray], scores: str, width: int, shape: tuple[int, ...]
) -> list[tuple[str, str, float]]:
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        keeper = CaptureKeeper(Path(directory), device_id="bench", clock=SystemClock())
        until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()

        def recorder(per_hour: int | None) -> StatsRecorder:
            made = StatsRecorder(reference=None, now_s=0.0)
            if per_hour is not None:
                keeper.order(
                    {"model": name, "below_confidence": 0.5, "per_hour": per_hour,
                     "max_bytes": 1 << 30, "until": until}
                )  # fmt: skip
                made.capture = keeper.capture_for(name, 1)
            return made

        confident = _probabilities(width, 0.9, shape)
        unsure = _probabilities(width, 0.2, shape)
        rows.append((name, "off", _time_per_call_us(recorder(None), inputs, scores, unsure, None)))
        rows.append(
            (name, "on, confident",
             _time_per_call_us(recorder(3600), inputs, scores, confident, keeper))
        )  # fmt: skip
        spent = recorder(1)
        spent.record(latency_s=0.001, inputs=inputs, outputs={scores: unsure}, error=False)
        rows.append(
            (name, "on, budget spent", _time_per_call_us(spent, inputs, scores, unsure, None))
        )
        # At most MAX_PENDING_SAMPLES wait between flushes: rounds of 16, emptied after each.
        kept = _time_per_call_us(
            recorder(3600), inputs, scores, unsure, keeper, calls=16, rounds=200
        )
        rows.append((name, "on, kept", kept))
    return rows


def main() -> None:
    rng = np.random.default_rng(0)
    tabular = {"input": rng.normal(size=(1, 64)).astype(np.float32)}
    image = {"data_0": rng.normal(size=(1, 3, 224, 224)).astype(np.float32)}
    rows = _case("tabular", tabular, "probabilities", 10, (1, 10))
    rows += _case("image", image, "softmaxout_1", 1000, (1, 1000, 1, 1))
    print("| model | capture | µs per record() |")
    print("| --- | --- | ---: |")
    for model, case, micros in rows:
        print(f"| {model} | {case} | {micros:.2f} |")


if __name__ == "__main__":
    main()
