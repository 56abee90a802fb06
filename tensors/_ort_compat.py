"""The one reach into onnxruntime's private API: ``InferenceSession._sess``.

``InferenceSession.run`` re-checks the feed's names and rebuilds the output names on
every call, and only adds a provider fallback that a CPU-only session never uses. Its
``_sess`` attribute is the C++ session binding whose ``run(output_names, feeds,
run_options)`` it calls underneath: same call, same outputs, a microsecond less.

Invariant: when the attribute is gone (an onnxruntime upgrade may rename it),
``binding_run`` returns ``None`` and the caller uses the public ``run``; nothing breaks,
it is only slower. ``tests/tensors/test_ort_compat.py`` fails, naming the attribute,
so the upgrade is noticed. onnxruntime is bounded above in ``pyproject.toml`` for the
same reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["SESSION_BINDING_ATTRIBUTE", "binding_run"]

SESSION_BINDING_ATTRIBUTE = "_sess"

# (output names, feeds, run options) -> output values, in the order of the names.
BindingRun = Callable[[list[str], dict[str, Any], Any], list[Any]]


def binding_run(session: Any) -> BindingRun | None:
    """The C++ binding's ``run`` of an ``onnxruntime.InferenceSession``, if it has one."""
    binding = getattr(session, SESSION_BINDING_ATTRIBUTE, None)
    run: BindingRun | None = getattr(binding, "run", None)
    return run
