"""The one private onnxruntime attribute ``tensors`` uses is still there, and optional."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from tensors import OnnxBackend, _ort_compat
from tests.tensors.conftest import Models


def test_onnxruntime_still_has_the_session_binding(models: Models) -> None:
    session = ort.InferenceSession(str(models.digits), providers=["CPUExecutionProvider"])
    attribute = _ort_compat.SESSION_BINDING_ATTRIBUTE
    if not hasattr(session, attribute) or not hasattr(getattr(session, attribute), "run"):
        pytest.fail(
            f"onnxruntime {ort.__version__}: InferenceSession.{attribute}.run is gone. "
            "OnnxBackend still works through the public run, only slower: update "
            "tensors/_ort_compat.py, then onnxruntime's upper bound in pyproject.toml."
        )
    run = _ort_compat.binding_run(session)
    assert run is not None
    x = np.ascontiguousarray(models.digits_inputs)
    names = [output.name for output in session.get_outputs()]
    for got, want in zip(
        run(names, {"input": x}, None), session.run(names, {"input": x}), strict=True
    ):
        assert np.array_equal(got, want)


def test_without_the_binding_the_backend_uses_the_public_run(
    models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = np.ascontiguousarray(models.digits_inputs)
    expected = OnnxBackend(models.digits).run({"input": x})
    monkeypatch.setattr(_ort_compat, "SESSION_BINDING_ATTRIBUTE", "_no_such_attribute")
    backend = OnnxBackend(models.digits)
    assert _ort_compat.binding_run(backend._session) is None
    got = backend.run({"input": x})
    assert all(np.array_equal(got[name], expected[name]) for name in expected)
