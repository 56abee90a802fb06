"""What counting an image's drift per channel costs the serving path (issue 17 item 6).

The statistics recorder counts, for every request, the image's pixels on a strided grid
(at most 1,024 per channel) into the reference's bins: one pooled histogram and one per
colour channel. Printed per 1x3x224x224 request, with drift off (a reference profile of
generated data, never judged) as the baseline in the same run; compare with the model's
own inference time (SqueezeNet: about 1.9 ms here, bench/serving_paths.py).

    .venv/bin/python bench/image_drift_cost.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from agent.stats.recorder import StatsRecorder
from protocol import Histogram, ReferenceProfile
from tensors.profile import drift_sample, feature_histograms, histogram

REQUESTS = 2000


def per_request_us(reference: ReferenceProfile | None, image: np.ndarray) -> float:
    recorder = StatsRecorder(reference=reference, now_s=0.0)
    start = time.perf_counter()
    for _ in range(REQUESTS):
        recorder.record(latency_s=0.002, inputs={"image": image}, outputs=None, error=False)
    recorder.cumulative()  # measures whatever is still pending
    return (time.perf_counter() - start) / REQUESTS * 1e6


def main() -> None:
    rng = np.random.default_rng(1)
    images = rng.uniform(0.0, 1.0, size=(32, 3, 224, 224)).astype(np.float32)
    whole = histogram(drift_sample(images))
    assert whole is not None
    inputs = {"image": Histogram(**whole)}
    inputs |= {k: Histogram(**h) for k, h in feature_histograms("image", images).items()}
    judged = ReferenceProfile(source="validation", inputs=inputs)
    generated = judged.model_copy(update={"source": "generated"})
    image = images[:1]
    baseline = per_request_us(generated, image)
    measured = per_request_us(judged, image)
    print(f"recorder cost per 1x3x224x224 request, {REQUESTS} requests")
    print(f"  drift off (baseline):                 {baseline:7.1f} us")
    print(
        f"  pooled + 3 channels (validation ref): {measured:7.1f} us (+{measured - baseline:.1f})"
    )


if __name__ == "__main__":
    main()
