"""The controller's error tree: one home, drawn in its docstring, each with its API status."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

import controller
import controller.errors as errors
from controller.app import STATUS_BY_ERROR
from controller.errors import ControllerError
from controller.rollouts.core import RolloutSpecError

# Importing every module defines every subclass, wherever it lives.
for _module in pkgutil.walk_packages(controller.__path__, "controller."):
    if ".migrations" not in _module.name and not _module.name.endswith("__main__"):
        importlib.import_module(_module.name)


def _all_subclasses(cls: type[Exception]) -> list[type[Exception]]:
    found: list[type[Exception]] = []
    for sub in cls.__subclasses__():
        found += [sub, *_all_subclasses(sub)]
    return found


ERRORS = [ControllerError, *_all_subclasses(ControllerError)]


def status_of(cls: type[Exception]) -> int:
    return next((status for kind, status in STATUS_BY_ERROR if issubclass(cls, kind)), 500)


def test_every_controller_error_lives_in_errors_and_is_exported() -> None:
    homeless = [
        f"{cls.__module__}.{cls.__name__}"
        for cls in ERRORS
        if cls.__module__ != "controller.errors"
    ]

    assert homeless == []
    assert {cls.__name__ for cls in ERRORS if cls.__module__ == "controller.errors"} <= set(
        errors.__all__
    )


@pytest.mark.parametrize("cls", [*ERRORS, RolloutSpecError], ids=lambda cls: cls.__name__)
def test_every_error_is_drawn_in_the_tree_with_the_status_the_api_answers(
    cls: type[Exception],
) -> None:
    drawn = re.search(rf"{cls.__name__}(?: \(\w+\))?\s+(\d{{3}})\b", errors.__doc__ or "")

    assert drawn is not None, cls.__name__
    assert int(drawn.group(1)) == status_of(cls)


def test_the_rollout_core_error_is_a_plain_value_error_answered_with_400() -> None:
    assert not issubclass(RolloutSpecError, ControllerError)
    assert issubclass(RolloutSpecError, ValueError)
    assert status_of(RolloutSpecError) == 400
