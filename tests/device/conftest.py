"""The device matrix: the agent installed as a device installs it, with tflite-runtime.

Run by ``make device-matrix`` in ``.venv-device`` (``pip install '.[agent]' 'numpy<2'
tflite-runtime``, no ai_edge_litert), with ``EDGEFLEET_DEVICE_MODELS`` naming the files
``tests/device/make_models.py`` built in the main venv. Nothing here imports ``tests``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def models_dir() -> Path:
    value = os.environ.get("EDGEFLEET_DEVICE_MODELS")
    if not value:
        pytest.fail("EDGEFLEET_DEVICE_MODELS is not set: run these tests with `make device-matrix`")
    return Path(value)
