"""The agent's door to the runtime backends: ``tensors`` errors become the agent's, once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

import tensors
from agent.backends import load_backend, runtime_options
from agent.errors import ConfigurationError, ModelLoadError
from agent.serving.server import ModelServer
from tests.agent.e2e.models import affine_model
from tests.model_factory import identity_model


def test_settings_with_no_execution_provider_are_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="at least one execution provider") as info:
        runtime_options(providers=(), intra_op_threads=1)
    assert isinstance(info.value.__cause__, tensors.InvalidOptionsError)


def test_a_model_the_runtime_refuses_is_a_model_load_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x08\x07junk" * 64)
    with pytest.raises(ModelLoadError, match=r"onnxruntime cannot load junk\.onnx") as info:
        load_backend(path, "onnx")
    assert isinstance(info.value.__cause__, tensors.ModelRefusedError)


def test_a_failed_run_is_a_model_load_error(tmp_path: Path) -> None:
    backend = load_backend(affine_model(tmp_path / "affine.onnx", 0.0), "onnx")
    with pytest.raises(ModelLoadError, match="onnxruntime failed to run") as info:
        backend.run({"x": np.zeros((1, 5), dtype=np.float32)})
    assert isinstance(info.value.__cause__, tensors.RunFailedError)


def test_an_input_of_a_type_with_no_oip_name_cannot_be_served(tmp_path: Path) -> None:
    path = identity_model(tmp_path / "strings.onnx", TensorProto.STRING)
    with pytest.raises(ModelLoadError, match=r"datatype tensor\(string\), which cannot be served"):
        ModelServer("strings").load(path, "onnx", version="1")
