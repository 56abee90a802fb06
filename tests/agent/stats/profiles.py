"""Reference histograms built the way the converter builds them, and feeding a recorder."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

import numpy as np

from agent.stats.recorder import StatsRecorder, WindowStats
from protocol import Histogram

BINS = 10


def histogram_of(values: np.ndarray, *, bins: int = BINS) -> Histogram:
    """Equal-width bins over the values, as ``converters.profile.histogram`` makes them."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    edges = np.linspace(flat.min(), flat.max(), bins + 1)
    counts, _ = np.histogram(flat, bins=edges)
    return Histogram(
        bin_edges=[float(e) for e in edges],
        fractions=[float(c) / flat.size for c in counts],
    )


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted: np.ndarray = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
    return probabilities.astype(np.float32)


def record_all(
    recorder: StatsRecorder,
    latencies_s: Iterable[float],
    *,
    inputs: Mapping[str, np.ndarray] | None = None,
    outputs: Mapping[str, np.ndarray] | None = None,
    error: bool = False,
) -> None:
    for latency_s in latencies_s:
        recorder.record(latency_s=latency_s, inputs=inputs, outputs=outputs, error=error)


def roll_while_recording(
    recorder: StatsRecorder, workers: list[threading.Thread], start: threading.Barrier
) -> list[WindowStats]:
    """Start ``workers``, roll windows until they finish, then close the last window."""
    windows: list[WindowStats] = []
    for worker in workers:
        worker.start()
    start.wait()
    now_s = 0.0
    while any(worker.is_alive() for worker in workers):
        now_s += 1.0
        if (closed := recorder.roll(now_s)) is not None:
            windows.append(closed)
    for worker in workers:
        worker.join()
    last = recorder.roll(now_s + 1.0, force=True)
    assert last is not None
    windows.append(last)
    return windows
