"""One real MLflow server for the registry tests that import from it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.controller.mlflow_server import MlflowServer, running_mlflow


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with running_mlflow(tmp_path_factory.mktemp("mlflow")) as server:
        yield server
