"""The ``protocol`` namespace is the public API: everything public is exported there."""

from __future__ import annotations

import importlib
import pkgutil

import protocol


def test_every_exported_name_exists() -> None:
    missing = [name for name in protocol.__all__ if not hasattr(protocol, name)]
    assert missing == []


def test_every_submodule_export_is_in_the_public_namespace() -> None:
    for module_info in pkgutil.iter_modules(protocol.__path__):
        module = importlib.import_module(f"protocol.{module_info.name}")
        not_exported = set(getattr(module, "__all__", ())) - set(protocol.__all__)
        assert not_exported == set(), f"protocol.{module_info.name}"
