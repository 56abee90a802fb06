"""``POST /api/v1/models/{name}/import`` against a real ``mlflow server``, with models the
tests log through MLflow's own client; and the import's pure checks, as tables."""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import controller
from controller.app import create_app
from controller.db import session_scope
from controller.errors import ModelRejectedError, UploadTooLargeError
from controller.registry.mlflow_import import (
    MlflowFile,
    choose_model_file,
    choose_validation_file,
    proxy_path_of,
    verify_artifact_path,
)
from controller.registry.mlflow_lineage import (
    MAX_LINEAGE_DATASETS,
    MAX_LINEAGE_ENTRIES,
    MAX_LINEAGE_TEXT_CHARS,
    lineage_of,
)
from controller.registry.mlflow_rest import MlflowRest
from controller.settings import load_settings
from controller.tokens import Role, create_token
from tests.agent.e2e.models import affine_model
from tests.brokers import free_port
from tests.controller.conftest import TEST_PASSPHRASE, bearer, ctx
from tests.controller.mlflow_server import (
    STARTUP_TIMEOUT_S,
    FakeAnswer,
    HostileMlflow,
    MlflowServer,
)
from tests.security.http_server import controller_settings, served

# The first test here that needs the server waits for it to start: up to
# STARTUP_TIMEOUT_S on a loaded machine, on top of the test itself.
pytestmark = pytest.mark.timeout(STARTUP_TIMEOUT_S + 120)


@pytest.fixture(scope="module")
def mlflow(mlflow_server: MlflowServer) -> Iterator[Any]:
    """MLflow's client library, pointed at the session's server."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
        import mlflow as client

        client.set_tracking_uri(mlflow_server.url)
        yield client


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("mlflow-models")
    validation = directory / "validation.npz"
    np.savez(validation, x=np.linspace(0, 1, 32, dtype=np.float32).reshape(8, 4))
    notes = directory / "notes.txt"
    notes.write_text("no model here\n")
    return {
        "model": affine_model(directory / "model.onnx", 1.0),
        "other": affine_model(directory / "other.onnx", 2.0),
        "validation": validation,
        "notes": notes,
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def log_run(
    mlflow: Any,
    artifacts: list[tuple[str, Path]],
    *,
    params: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    dataset: bool = False,
) -> Any:
    """A finished run with ``artifacts``: (directory in the run, local file) pairs."""
    mlflow.set_experiment(unique("edgefleet-tests"))
    with mlflow.start_run() as run:
        mlflow.log_params(params or {})
        mlflow.log_metrics(metrics or {})
        if dataset:
            features = np.zeros((8, 4), dtype=np.float32)
            logged = mlflow.data.from_numpy(
                features, source="file:///data/train.npy", name="train-set"
            )
            mlflow.log_input(logged, context="training")
        for directory, path in artifacts:
            mlflow.log_artifact(str(path), artifact_path=directory or None)
    return run


def register_directory(mlflow: Any, run: Any, directory: str) -> tuple[str, str]:
    """Register ``directory`` of ``run`` as a new model's version 1, as MLflow 2 did."""
    client = mlflow.MlflowClient()
    name = unique("mlflow-model")
    client.create_registered_model(name)
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/{directory}", run_id=run.info.run_id
    )
    return name, str(version.version)


def import_version(
    client: TestClient,
    token: str,
    server: MlflowServer | str,
    source: str,
    name: str = "imported",
    **extra: Any,
) -> Any:
    url = server if isinstance(server, str) else server.url
    return client.post(
        f"/api/v1/models/{name}/import",
        headers=bearer(token),
        json={"source": source, "mlflow_uri": url, **extra},
    )


def leftovers(app: FastAPI) -> list[Path]:
    work = ctx(app).settings.work_dir / "imports"
    return sorted(work.rglob("*")) if work.exists() else []


def stored_files(app: FastAPI) -> list[Path]:
    return sorted(p for p in ctx(app).settings.artifacts_dir.rglob("*") if p.is_file())


def test_import_stores_the_mlflow_artifact_and_records_the_run_it_came_from(
    client: TestClient,
    app: FastAPI,
    tokens: dict[Role, str],
    mlflow_server: MlflowServer,
    mlflow: Any,
    files: dict[str, Path],
) -> None:
    run = log_run(
        mlflow,
        [("model", files["model"]), ("model", files["validation"])],
        params={"lr": 0.1, "epochs": 3},
        metrics={"accuracy": 0.93},
        dataset=True,
    )
    name, version = register_directory(mlflow, run, "model")

    answer = import_version(
        client, tokens[Role.OPERATOR], mlflow_server, f"models:/{name}/{version}"
    )

    assert answer.status_code == 201, answer.text
    row = answer.json()
    assert (row["version"], row["origin"], row["format"]) == (1, "import", "onnx")
    assert row["sha256"] == hashlib.sha256(files["model"].read_bytes()).hexdigest()
    assert row["has_validation_set"] is True
    assert row["pipeline"] is None
    shown = client.get("/api/v1/models/imported/versions/1", headers=bearer(tokens[Role.VIEWER]))
    lineage = shown.json()["lineage"]
    assert lineage["source"] == "mlflow"
    assert lineage["source_uri"] == f"models:/{name}/{version}"
    assert lineage["run_id"] == run.info.run_id
    assert lineage["experiment"].startswith("edgefleet-tests-")
    assert lineage["params"] == {"epochs": "3", "lr": "0.1"}
    assert lineage["metrics"] == {"accuracy": 0.93}
    [dataset] = lineage["datasets"]
    assert (dataset["name"], dataset["context"]) == ("train-set", "training")
    assert dataset["digest"]
    assert dataset["source"] == "file:///data/train.npy"
    assert lineage["imported_by"] == "test-operator"
    assert leftovers(app) == []


def test_import_of_an_mlflow3_logged_onnx_model_finds_its_file_and_the_runs_validation_set(
    client: TestClient,
    tokens: dict[Role, str],
    mlflow_server: MlflowServer,
    mlflow: Any,
    files: dict[str, Path],
) -> None:
    import onnx

    mlflow.set_experiment(unique("edgefleet-tests"))
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(files["validation"]))  # at the top of the run's artifacts
        logged = mlflow.onnx.log_model(onnx.load(files["model"]), name="model")
    name = unique("logged-model")
    registered = mlflow.register_model(logged.model_uri, name)

    answer = import_version(
        client, tokens[Role.OPERATOR], mlflow_server, f"models:/{name}/{registered.version}"
    )

    assert answer.status_code == 201, answer.text
    row = answer.json()
    assert row["sha256"] == hashlib.sha256(files["model"].read_bytes()).hexdigest()
    assert row["has_validation_set"] is True
    assert row["lineage"]["run_id"] == run.info.run_id
    assert row["lineage"]["model_source"] == logged.model_uri  # models:/m-…


def test_import_by_alias_records_the_version_the_alias_named(
    client: TestClient,
    tokens: dict[Role, str],
    mlflow_server: MlflowServer,
    mlflow: Any,
    files: dict[str, Path],
) -> None:
    run = log_run(mlflow, [("model", files["model"])])
    name, version = register_directory(mlflow, run, "model")
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)

    answer = import_version(
        client, tokens[Role.OPERATOR], mlflow_server, f"models:/{name}@champion"
    )

    assert answer.status_code == 201, answer.text
    assert answer.json()["lineage"]["source_uri"] == f"models:/{name}/{version}"
    assert answer.json()["lineage"]["alias"] == "champion"
    assert answer.json()["has_validation_set"] is False


def test_import_into_a_channel_starts_its_pipeline(
    client: TestClient,
    tokens: dict[Role, str],
    mlflow_server: MlflowServer,
    mlflow: Any,
    files: dict[str, Path],
) -> None:
    operator = tokens[Role.OPERATOR]
    channel = {"name": "edge", "rollout": {"waves": "100%", "soak": "0s", "selector": "a=b"}}
    assert client.post("/api/v1/channels", headers=bearer(operator), json=channel).is_success
    run = log_run(mlflow, [("model", files["model"]), ("model", files["validation"])])
    name, version = register_directory(mlflow, run, "model")

    answer = import_version(
        client, operator, mlflow_server, f"models:/{name}/{version}", channel="edge"
    )

    assert answer.status_code == 201, answer.text
    pipeline = answer.json()["pipeline"]
    assert pipeline == answer.headers["X-Edgefleet-Pipeline"]
    shown = client.get(f"/api/v1/pipelines/{pipeline}", headers=bearer(operator)).json()
    assert (shown["channel"], shown["model"], shown["source_version"]) == ("edge", "imported", 1)


def test_an_unknown_channel_is_404_before_anything_is_fetched(
    client: TestClient, app: FastAPI, tokens: dict[Role, str]
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # never asked: the channel is checked first

    answer = import_version(
        client, tokens[Role.OPERATOR], nowhere, "models:/digits/1", channel="nope"
    )

    assert answer.status_code == 404, answer.text
    assert "nope" in answer.json()["detail"]


def test_an_unknown_mlflow_version_is_404_naming_it(
    client: TestClient,
    tokens: dict[Role, str],
    mlflow_server: MlflowServer,
    mlflow: Any,
    files: dict[str, Path],
) -> None:
    run = log_run(mlflow, [("model", files["model"])])
    name, _ = register_directory(mlflow, run, "model")

    answer = import_version(client, tokens[Role.OPERATOR], mlflow_server, f"models:/{name}/7")

    assert answer.status_code == 404, answer.text
    assert f"models:/{name}/7" in answer.json()["detail"]


def test_a_version_with_no_onnx_or_tflite_file_is_refused_with_422(
    client: TestClient,
    app: FastAPI,
    tokens: dict[Role, str],
    mlflow_server: MlflowServer,
    mlflow: Any,
    files: dict[str, Path],
) -> None:
    run = log_run(mlflow, [("model", files["notes"])])
    name, version = register_directory(mlflow, run, "model")

    answer = import_version(
        client, tokens[Role.OPERATOR], mlflow_server, f"models:/{name}/{version}"
    )

    assert answer.status_code == 422, answer.text
    assert answer.json()["kind"] == "no_model_file"
    assert "notes.txt" in answer.json()["detail"]
    assert client.get("/api/v1/models", headers=bearer(tokens[Role.VIEWER])).json() == []


def test_a_directory_with_two_model_files_is_refused_as_ambiguous(
    client: TestClient,
    tokens: dict[Role, str],
    mlflow_server: MlflowServer,
    mlflow: Any,
    files: dict[str, Path],
) -> None:
    run = log_run(mlflow, [("model", files["other"]), ("model", files["validation"])])
    mlflow.MlflowClient().log_artifact(run.info.run_id, str(files["model"]), "model/extra")
    # model/other.onnx and model/extra/model.onnx: neither is model.onnx at the top.
    name, version = register_directory(mlflow, run, "model")

    answer = import_version(
        client, tokens[Role.OPERATOR], mlflow_server, f"models:/{name}/{version}"
    )

    assert answer.status_code == 422, answer.text
    assert answer.json()["kind"] == "ambiguous_model_file"


def test_an_artifact_over_the_upload_limit_is_413_and_leaves_nothing_behind(
    tmp_path: Path, mlflow_server: MlflowServer, mlflow: Any, files: dict[str, Path]
) -> None:
    limit = files["model"].stat().st_size - 1
    settings = load_settings(
        environ={},
        overrides={
            "data_dir": tmp_path / "data",
            "database_url": f"sqlite:///{tmp_path / 'controller.db'}",
            "max_upload_bytes": limit,
        },
    )
    app = create_app(settings, environ={"EDGEFLEET_KEY_PASSPHRASE": TEST_PASSPHRASE})
    run = log_run(mlflow, [("model", files["model"])])
    name, version = register_directory(mlflow, run, "model")
    with session_scope(ctx(app).engine) as session:
        token = create_token(session, name="test-operator", role=Role.OPERATOR)
    before = stored_files(app)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            answer = import_version(client, token, mlflow_server, f"models:/{name}/{version}")
            versions = client.get("/api/v1/models", headers=bearer(token)).json()
    finally:
        ctx(app).engine.dispose()

    assert answer.status_code == 413, answer.text
    assert f"limit of {limit}" in answer.json()["detail"]
    assert versions == []
    assert leftovers(app) == []
    assert stored_files(app) == before


def test_a_download_over_its_limit_is_refused_and_its_partial_file_removed(
    tmp_path: Path, mlflow_server: MlflowServer, mlflow: Any, files: dict[str, Path]
) -> None:
    # The listing's size is the server's word; the download counts for itself.
    run = log_run(mlflow, [("model", files["model"])])
    path = run.info.artifact_uri.removeprefix("mlflow-artifacts:/") + "/model/model.onnx"
    destination = tmp_path / "model.onnx"

    with MlflowRest(mlflow_server.url) as rest, pytest.raises(UploadTooLargeError):
        rest.download(
            f"/api/2.0/mlflow-artifacts/artifacts/{path}",
            destination,
            max_bytes=files["model"].stat().st_size - 1,
            what="model file",
        )

    assert not destination.exists()


def test_an_unreachable_mlflow_is_502_not_500(
    client: TestClient, app: FastAPI, tokens: dict[Role, str]
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"

    answer = import_version(client, tokens[Role.OPERATOR], nowhere, "models:/digits/1")

    assert answer.status_code == 502, answer.text
    assert "unreachable" in answer.json()["detail"]
    assert leftovers(app) == []


def test_a_server_that_is_not_mlflow_is_502(
    client: TestClient, tokens: dict[Role, str], mlflow_server: MlflowServer
) -> None:
    # The MLflow server's own static page: an answer, but not the API asked for.
    answer = import_version(
        client, tokens[Role.OPERATOR], f"{mlflow_server.url}/static-files", "models:/digits/1"
    )

    assert answer.status_code == 502, answer.text


@pytest.mark.parametrize(
    ("source", "mlflow_uri"),
    [
        ("runs:/abc/model", "http://127.0.0.1:1"),
        ("models:/digits", "http://127.0.0.1:1"),
        ("models:/digits/0", "http://127.0.0.1:1"),
        ("models:/digits/1", "file:///etc"),
        ("models:/digits/1", "127.0.0.1:5000"),
    ],
)
def test_a_malformed_source_or_mlflow_uri_is_400_before_anything_is_fetched(
    client: TestClient, tokens: dict[Role, str], source: str, mlflow_uri: str
) -> None:
    answer = import_version(client, tokens[Role.OPERATOR], mlflow_uri, source)

    assert answer.status_code == 400, answer.text


def test_an_unknown_field_in_the_request_is_refused(
    client: TestClient, tokens: dict[Role, str]
) -> None:
    answer = client.post(
        "/api/v1/models/digits/import",
        headers=bearer(tokens[Role.OPERATOR]),
        json={"source": "models:/digits/1", "mlflowUri": "http://mlflow:5000"},
    )

    assert answer.status_code == 422, answer.text


def test_import_needs_the_operator_role(client: TestClient, tokens: dict[Role, str]) -> None:
    answer = import_version(client, tokens[Role.VIEWER], "http://127.0.0.1:1", "models:/digits/1")

    assert answer.status_code == 403


def test_model_import_command_imports_through_a_live_controller(
    tmp_path: Path, mlflow_server: MlflowServer, mlflow: Any, files: dict[str, Path]
) -> None:
    from controller.cli import main as controller_cli

    run = log_run(mlflow, [("model", files["model"])], params={"lr": 0.5})
    name, version = register_directory(mlflow, run, "model")
    with served(controller_settings(tmp_path)) as controller:
        env = {
            "EDGEFLEET_URL": f"http://127.0.0.1:{controller.port}",
            "EDGEFLEET_TOKEN": controller.token(Role.OPERATOR),
            "MLFLOW_TRACKING_URI": mlflow_server.url,
            "COLUMNS": "200",
        }
        named = CliRunner().invoke(
            controller_cli.app,
            ["model", "import", f"models:/{name}/{version}", "--name", "cli-import", "--json"],
            env=env,
        )
        # No --name: MLflow's; no --mlflow-uri: MLFLOW_TRACKING_URI.
        default = CliRunner().invoke(
            controller_cli.app, ["model", "import", f"models:/{name}/{version}"], env=env
        )
        shown = CliRunner().invoke(controller_cli.app, ["model", "show", "cli-import:1"], env=env)

    assert named.exit_code == 0, named.output
    row = json.loads(named.stdout)
    assert (row["model_name"], row["version"]) == ("cli-import", 1)
    assert row["lineage"]["params"] == {"lr": "0.5"}
    assert default.exit_code == 0, default.output
    assert f"imported models:/{name}/{version} as {name}:1" in default.stdout
    assert shown.exit_code == 0, shown.output
    assert run.info.run_id in shown.stdout


def test_a_plain_upload_records_its_file_name_and_uploader_as_lineage(
    client: TestClient, tokens: dict[Role, str], files: dict[str, Path]
) -> None:
    # Uploads and imports share register_model_file; only the lineage says which it was.
    answer = client.post(
        "/api/v1/models/pushed/versions",
        headers=bearer(tokens[Role.OPERATOR]),
        files={"model": ("affine.onnx", files["model"].read_bytes())},
    )

    assert answer.status_code == 201, answer.text
    assert answer.json()["origin"] == "upload"
    assert answer.json()["lineage"] == {
        "source": "upload",
        "filename": "affine.onnx",
        "uploaded_by": "test-operator",
    }


# A hostile server: what a real MLflow would not answer, and must not get through.

ROOT = "1/r/artifacts/model"


@pytest.fixture
def hostile() -> Iterator[HostileMlflow]:
    with HostileMlflow() as server:
        server.serve_version("evil", "1", f"mlflow-artifacts:/{ROOT}")
        yield server


@pytest.fixture
def small_limit_app(tmp_path: Path) -> Iterator[tuple[FastAPI, str]]:
    """A controller taking models of at most 1 KiB, and an operator token for it."""
    settings = load_settings(
        environ={},
        overrides={
            "data_dir": tmp_path / "data",
            "database_url": f"sqlite:///{tmp_path / 'controller.db'}",
            "max_upload_bytes": 1024,
        },
    )
    app = create_app(settings, environ={"EDGEFLEET_KEY_PASSPHRASE": TEST_PASSPHRASE})
    with session_scope(ctx(app).engine) as session:
        token = create_token(session, name="test-operator", role=Role.OPERATOR)
    yield app, token
    ctx(app).engine.dispose()


@pytest.mark.parametrize(
    "listed", ["../../../other-run/model.onnx", "/etc/model.onnx", "a\\..\\model.onnx"]
)
def test_a_listing_that_escapes_the_artifact_directory_is_refused_unfetched(
    client: TestClient, tokens: dict[Role, str], hostile: HostileMlflow, listed: str
) -> None:
    hostile.serve_listing(ROOT, [{"path": listed, "is_dir": False, "file_size": 10}])

    answer = import_version(client, tokens[Role.OPERATOR], hostile.url, "models:/evil/1")

    assert answer.status_code == 422, answer.text
    assert answer.json()["kind"] == "unsafe_artifact_path"
    downloads = "/api/2.0/mlflow-artifacts/artifacts/"
    assert not [r for r in hostile.requests if r.startswith(downloads)]


def test_a_file_larger_than_listed_is_cut_at_the_limit_and_leaves_nothing(
    small_limit_app: tuple[FastAPI, str], hostile: HostileMlflow
) -> None:
    app, token = small_limit_app
    hostile.serve_listing(ROOT, [{"path": "model.onnx", "is_dir": False, "file_size": 100}])
    # Listed as 100 bytes, sent as 64 KiB with no Content-Length to stop it early.
    hostile.answers[f"/api/2.0/mlflow-artifacts/artifacts/{ROOT}/model.onnx"] = FakeAnswer(
        body=b"\0" * 65536, declare_length=False
    )
    before = stored_files(app)

    with TestClient(app, raise_server_exceptions=False) as client:
        answer = import_version(client, token, hostile.url, "models:/evil/1")

    assert answer.status_code == 413, answer.text
    assert leftovers(app) == []
    assert stored_files(app) == before


def test_a_redirect_from_mlflow_is_not_followed(
    client: TestClient, tokens: dict[Role, str], hostile: HostileMlflow
) -> None:
    hostile.answers["/api/2.0/mlflow/model-versions/get"] = FakeAnswer(
        302, b"", {"Location": "http://169.254.169.254/latest/meta-data/"}
    )

    answer = import_version(client, tokens[Role.OPERATOR], hostile.url, "models:/evil/1")

    assert answer.status_code == 502, answer.text
    assert hostile.requests == ["/api/2.0/mlflow/model-versions/get?name=evil&version=1"]


def test_a_version_stored_outside_the_artifact_proxy_is_refused(
    client: TestClient, tokens: dict[Role, str], hostile: HostileMlflow
) -> None:
    hostile.serve_version("evil", "1", "file:///etc")

    answer = import_version(client, tokens[Role.OPERATOR], hostile.url, "models:/evil/1")

    assert answer.status_code == 422, answer.text
    assert answer.json()["kind"] == "artifacts_not_proxied"


# The pure checks: what MLflow may answer, and what the import makes of it.


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/etc/passwd",
        "../secrets",
        "model/../../other-run",
        "model/./model.onnx",
        "model//model.onnx",
        "model\\..\\x",
        "C:/model.onnx",
        "model\x00.onnx",
        "model\n.onnx",
    ],
)
def test_an_unsafe_artifact_path_is_refused(path: str) -> None:
    with pytest.raises(ModelRejectedError) as caught:
        verify_artifact_path(path)
    assert caught.value.kind == "unsafe_artifact_path"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("mlflow-artifacts:/1/abc/artifacts/model", "1/abc/artifacts/model"),
        ("mlflow-artifacts://host:5000/1/models/m-1/artifacts", "1/models/m-1/artifacts"),
        ("mlflow-artifacts:/1/abc/artifacts/model/", "1/abc/artifacts/model"),
    ],
)
def test_proxied_artifact_uris_map_to_proxy_paths(uri: str, expected: str) -> None:
    assert proxy_path_of(uri) == expected


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("s3://bucket/1/abc/artifacts/model", "artifacts_not_proxied"),
        ("file:///mlruns/1/abc/artifacts/model", "artifacts_not_proxied"),
        ("/mlruns/1/abc", "artifacts_not_proxied"),
        ("mlflow-artifacts:/1/../../etc", "unsafe_artifact_path"),
    ],
)
def test_unproxied_or_escaping_artifact_uris_are_refused(uri: str, kind: str) -> None:
    with pytest.raises(ModelRejectedError) as caught:
        proxy_path_of(uri)
    assert caught.value.kind == kind


@pytest.mark.parametrize(
    ("paths", "chosen"),
    [
        (["MLmodel", "model.onnx", "conda.yaml"], "model.onnx"),
        (["net.tflite"], "net.tflite"),
        (["model.onnx", "variants/int8.onnx"], "model.onnx"),
        (["sub/NET.ONNX", "README"], "sub/NET.ONNX"),
        (["model.onnx", "model.tflite"], None),
        (["a.onnx", "b.onnx"], None),
        (["model.pkl", "MLmodel"], None),
    ],
)
def test_the_model_file_is_the_only_one_or_model_at_the_top(
    paths: list[str], chosen: str | None
) -> None:
    listed = [MlflowFile(p) for p in paths]
    if chosen is None:
        with pytest.raises(ModelRejectedError):
            choose_model_file(listed, "models:/m/1")
    else:
        assert choose_model_file(listed, "models:/m/1").path == chosen


def test_the_validation_set_is_the_shallowest_validation_npz() -> None:
    listed = [MlflowFile(p) for p in ["data/validation.npz", "validation.npz", "calib.npz"]]
    assert choose_validation_file(listed) == MlflowFile("validation.npz")
    assert choose_validation_file([MlflowFile("calib.npz")]) is None


def test_lineage_is_bounded_whatever_mlflow_answers() -> None:
    long = "x" * 10_000
    run = {
        "info": {"run_id": long, "experiment_id": "1", "run_name": long},
        "data": {
            "params": [{"key": f"p{i:03}", "value": long} for i in range(200)],
            "metrics": [{"key": f"m{i:03}", "value": float(i)} for i in range(200)]
            + [{"key": "nan", "value": math.nan}, {"key": "text", "value": "0.5"}],
        },
        "inputs": {
            "dataset_inputs": [
                {"dataset": {"name": f"d{i}", "digest": long, "source": '{"uri": "s3://b/k"}'}}
                for i in range(40)
            ]
        },
    }

    lineage = lineage_of(
        source_uri="models:/m/1",
        alias=None,
        mlflow_uri="http://mlflow",
        version={"source": long, "run_id": "r"},
        artifact_uri="mlflow-artifacts:/1/r/artifacts/model",
        model_file="model.onnx",
        validation_file=None,
        run=run,
        experiment={"experiment": {"name": long}},
    )

    assert len(lineage["params"]) == MAX_LINEAGE_ENTRIES
    assert len(lineage["metrics"]) == MAX_LINEAGE_ENTRIES
    assert "nan" not in lineage["metrics"]
    assert "text" not in lineage["metrics"]
    assert len(lineage["datasets"]) == MAX_LINEAGE_DATASETS
    assert lineage["datasets"][0]["source"] == "s3://b/k"
    texts = [v for v in lineage.values() if isinstance(v, str)]
    texts += list(lineage["params"].values()) + [d["digest"] for d in lineage["datasets"]]
    assert max(len(t) for t in texts) == MAX_LINEAGE_TEXT_CHARS
    assert len(json.dumps(lineage)) < 64 * 1024


def test_import_never_puts_mlflow_credentials_in_the_lineage() -> None:
    with MlflowRest("https://alice:s3cret@mlflow.example:8443/prefix/") as rest:
        assert rest.display_url == "https://mlflow.example:8443/prefix"


def test_the_controller_package_never_imports_mlflow() -> None:
    # The controller speaks REST; mlflow is a test dependency only.
    imports_mlflow = re.compile(r"^\s*(?:import|from)\s+mlflow(?:[.\s]|$)", re.MULTILINE)
    for path in Path(controller.__file__).parent.rglob("*.py"):
        assert imports_mlflow.search(path.read_text()) is None, path
