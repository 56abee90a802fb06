"""No 500 from a model: whatever a model makes the controller do, a 4xx with the reason.

Real-size inputs: the onnx package's image networks (1x3x224x224), cut, corrupted, fed a
validation set that does not fit, too slow for the job limits, or declaring so many
outputs that no small release could describe them. Each leaves the registry unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from controller.app import create_app
from controller.settings import Settings, load_settings
from controller.tokens import Role
from tests.agent.sandbox.conftest import matmul_loop_model, save_onnx
from tests.controller.conftest import TEST_PASSPHRASE, bearer, ctx
from tests.controller.registry.test_registry import push
from tests.model_factory import onnx_reference_models


def reference_model(stem: str) -> Path:
    return next(path for path in onnx_reference_models() if path.stem == stem)


def versions(client: TestClient, token: str, name: str) -> int:
    response = client.get(f"/api/v1/models/{name}", headers=bearer(token))
    return len(response.json()["versions"]) if response.status_code == 200 else 0


def releases(client: TestClient, token: str) -> list[object]:
    response = client.get("/api/v1/releases", headers=bearer(token))
    assert response.status_code == 200, response.text
    body: list[object] = response.json()
    return body


@pytest.fixture(params=["sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    # The failures are the controller's and its jobs', not SQL's: one database is enough.
    return f"sqlite:///{tmp_path / 'controller.db'}"


def image_npz(path: Path, shape: tuple[int, ...], samples: int) -> Path:
    data = np.random.default_rng(0).standard_normal((samples, *shape[1:])).astype(np.float32)
    np.savez(path, data_0=data)
    return path


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("truncated", "malformed_model"), ("tail_cut", "malformed_model")],
)
def test_cut_image_model_is_refused_with_its_reason(
    client: TestClient, tokens: dict[Role, str], tmp_path: Path, kind: str, reason: str
) -> None:
    good = reference_model("light_inception_v2").read_bytes()
    cut = good[: len(good) // 2] if kind == "truncated" else good[:-7]
    path = tmp_path / "vision.onnx"
    path.write_bytes(cut)
    operator = tokens[Role.OPERATOR]

    answer = push(client, operator, "vision", path)

    assert answer["http_status"] == 422, answer
    assert reason in str(answer), answer
    assert versions(client, operator, "vision") == 0


def test_megabytes_of_random_bytes_named_onnx_are_refused(
    client: TestClient, tokens: dict[Role, str], tmp_path: Path
) -> None:
    path = tmp_path / "noise.onnx"
    path.write_bytes(b"\x08" + np.random.default_rng(1).bytes(8 * 1024 * 1024))
    answer = push(client, tokens[Role.OPERATOR], "noise", path)
    assert answer["http_status"] == 422, answer
    assert versions(client, tokens[Role.OPERATOR], "noise") == 0


def test_image_validation_set_of_the_wrong_size_is_refused(
    client: TestClient, tokens: dict[Role, str], tmp_path: Path
) -> None:
    model = reference_model("light_inception_v2")
    wrong = image_npz(tmp_path / "val.npz", (1, 3, 227, 227), samples=8)
    answer = push(client, tokens[Role.OPERATOR], "vision", model, validation=wrong)
    assert answer["http_status"] == 422, answer
    assert "bad_validation_set" in str(answer), answer
    assert versions(client, tokens[Role.OPERATOR], "vision") == 0


def many_outputs_model(directory: Path, count: int) -> Path:
    names = [f"{'o' * 200}{i:03d}" for i in range(count)]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], [name]) for name in names],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4]) for name in names],
    )
    return save_onnx(graph, directory / "wide.onnx")


def test_release_too_large_to_sign_small_is_refused_with_409(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], tmp_path: Path
) -> None:
    operator = tokens[Role.OPERATOR]
    pushed = push(client, operator, "wide", many_outputs_model(tmp_path, 60))
    assert pushed["http_status"] == 201, pushed
    stored_before = sorted(ctx(app).settings.artifacts_dir.rglob("*"))

    response = client.post("/api/v1/models/wide/versions/1/release", headers=bearer(operator))

    assert response.status_code == 409, response.text
    assert "more than 8192" in response.text
    assert releases(client, operator) == []
    assert sorted(ctx(app).settings.artifacts_dir.rglob("*")) == stored_before


@pytest.fixture
def slow_jobs_app(tmp_path: Path, database_url: str) -> Iterator[FastAPI]:
    settings: Settings = load_settings(
        environ={},
        overrides={
            "data_dir": tmp_path / "slow",
            "database_url": database_url,
            "job_wall_s": 4.0,
        },
    )
    app = create_app(settings, environ={"EDGEFLEET_KEY_PASSPHRASE": TEST_PASSPHRASE})
    yield app
    ctx(app).engine.dispose()


def test_model_too_slow_for_the_job_limits_gets_422_and_nothing_is_recorded(
    slow_jobs_app: FastAPI, tmp_path: Path
) -> None:
    from controller.db import session_scope
    from controller.tokens import create_token

    with session_scope(ctx(slow_jobs_app).engine) as session:
        token = create_token(session, name="operator", role=Role.OPERATOR)
    # Each run is ~10^12 turns of a 256x512 matmul: no profile job ever finishes.
    model = matmul_loop_model(tmp_path, iterations=10**12, name="endless")
    with TestClient(slow_jobs_app, raise_server_exceptions=False) as client:
        pushed = push(client, token, "endless", model)
        if pushed["http_status"] == 201:
            response = client.post(
                "/api/v1/models/endless/versions/1/release", headers=bearer(token)
            )
            assert response.status_code == 422, response.text
            assert "timed out" in response.text
            assert releases(client, token) == []
        else:
            assert pushed["http_status"] == 422, pushed
            assert versions(client, token, "endless") == 0
