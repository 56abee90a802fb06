"""The ``mqttlink`` namespace is the public API: everything public is exported there."""

from __future__ import annotations

import importlib
import pkgutil

import mqttlink


def test_every_exported_name_exists() -> None:
    missing = [name for name in mqttlink.__all__ if not hasattr(mqttlink, name)]
    assert missing == []


def test_every_submodule_export_is_in_the_public_namespace() -> None:
    for module_info in pkgutil.iter_modules(mqttlink.__path__):
        if module_info.name.startswith("_"):
            continue  # the compat modules are private
        module = importlib.import_module(f"mqttlink.{module_info.name}")
        not_exported = set(getattr(module, "__all__", ())) - set(mqttlink.__all__)
        assert not_exported == set(), f"mqttlink.{module_info.name}"
