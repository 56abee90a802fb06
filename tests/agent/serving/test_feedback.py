"""Ground truth from the application: every answer has an id; its true class comes back
through ``POST /v2/models/{name}/feedback`` and the device counts how often the model was
right, per window (real HTTP, the digits classifier)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from agent.serving.server import ModelServer
from agent.stats.recorder import FEEDBACK_MEMORY, StatsRecorder
from agent.stats.telemetry import to_telemetry_window
from tests.agent.serving.conftest import Models, RunningApi, tensor_json
from tests.agent.stats.test_recorder import WINDOW_START


def _served(models: Models, serve: Callable[..., RunningApi]) -> tuple[RunningApi, StatsRecorder]:
    recorder = StatsRecorder(reference=None, now_s=0.0)
    server = ModelServer("digits")
    server.swap(server.load(models.digits, "onnx", version="1", observer=recorder))
    return serve({"digits": server}), recorder


def _infer(running: RunningApi, row: np.ndarray, **fields: Any) -> dict[str, Any]:
    body = {"inputs": [tensor_json("input", row[None].astype(np.float32))], **fields}
    response = running.client.post("/v2/models/digits/infer", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _predicted(answer: dict[str, Any]) -> int:
    label = next(o for o in answer["outputs"] if o["name"] == "label")
    return int(label["data"][0])


def test_labels_sent_back_count_how_often_the_model_was_right(
    models: Models, serve: Callable[..., RunningApi]
) -> None:
    running, recorder = _served(models, serve)
    first, second = (_infer(running, row) for row in models.digits_inputs[:2])
    given = _infer(running, models.digits_inputs[2], id="app-42")

    assert len({first["id"], second["id"]}) == 2  # made up when the request has none
    assert given["id"] == "app-42"  # kept when it has one
    for answer, right in ((first, True), (second, False), (given, True)):
        label = _predicted(answer) if right else (_predicted(answer) + 1) % 10
        reply = running.client.post(
            "/v2/models/digits/feedback", json={"id": answer["id"], "label": label}
        )
        assert reply.status_code == 200, reply.text

    stats = recorder.roll(100.0, force=True)
    assert stats is not None
    assert (stats.labeled, stats.labeled_correct) == (3, 2)
    window = to_telemetry_window(stats, model="digits", release=None, window_start=WINDOW_START)
    assert (window.labeled, window.labeled_correct) == (3, 2)


def test_a_label_counts_once_and_only_for_a_known_answer(
    models: Models, serve: Callable[..., RunningApi]
) -> None:
    running, recorder = _served(models, serve)
    answer = _infer(running, models.digits_inputs[0])
    body = {"id": answer["id"], "label": _predicted(answer)}

    assert running.client.post("/v2/models/digits/feedback", json=body).status_code == 200
    again = running.client.post("/v2/models/digits/feedback", json=body)
    unknown = running.client.post("/v2/models/digits/feedback", json={"id": "nope", "label": 1})

    assert (again.status_code, unknown.status_code) == (404, 404)
    assert recorder.cumulative().labeled == 1


def test_malformed_feedback_gets_a_400(models: Models, serve: Callable[..., RunningApi]) -> None:
    running, _recorder = _served(models, serve)
    for body in (
        b"not json",
        b"[]",
        b'{"id": "x"}',
        b'{"id": "x", "label": -1}',
        b'{"id": "x", "label": true}',
        b'{"id": "x", "label": 1.5}',
        b'{"id": "' + b"x" * 300 + b'", "label": 1}',
    ):
        reply = running.client.post("/v2/models/digits/feedback", content=body)
        assert reply.status_code == 400, (body, reply.text)
    assert running.client.get("/v2/models/digits/feedback").status_code == 405


def test_only_the_most_recent_answers_wait_for_feedback(models: Models) -> None:
    recorder = StatsRecorder(reference=None, now_s=0.0)
    outputs = {"probabilities": np.full((1, 10), 0.1, dtype=np.float32)}
    for index in range(FEEDBACK_MEMORY + 1):
        recorder.remember(f"r{index}", outputs)

    assert recorder.feedback("r0", 1).value == "unknown_request"  # forgotten: bounded memory


def test_big_outputs_are_not_kept_waiting_for_a_label() -> None:
    """A segmentation map is no class: it is not held in memory for feedback."""
    recorder = StatsRecorder(reference=None, now_s=0.0)
    recorder.remember("map", {"mask": np.zeros((1, 21, 224, 224), dtype=np.float32)})

    assert recorder.feedback("map", 3).value == "unknown_request"
