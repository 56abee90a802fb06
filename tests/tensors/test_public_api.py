"""The ``tensors`` namespace is the public API: everything public is exported there."""

from __future__ import annotations

import importlib
import pkgutil

import tensors


def test_every_exported_name_exists() -> None:
    assert [name for name in tensors.__all__ if not hasattr(tensors, name)] == []


def test_every_submodule_export_is_in_the_public_namespace() -> None:
    for module_info in pkgutil.iter_modules(tensors.__path__):
        if module_info.name.startswith("_"):
            continue  # private: reached only from inside the package
        module = importlib.import_module(f"tensors.{module_info.name}")
        not_exported = set(getattr(module, "__all__", ())) - set(tensors.__all__)
        assert not_exported == set(), f"tensors.{module_info.name}"
