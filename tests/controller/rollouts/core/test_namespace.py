"""The rollout core's namespace is its public API: everything it exports is in ``__all__``.

That the core does no I/O, reads no clock and draws no random numbers is checked by
import-linter (``pyproject.toml``), not here.
"""

from __future__ import annotations

import controller.rollouts.core as core


def test_public_namespace_matches_all() -> None:
    exported = set(core.__all__)

    assert exported == {name for name in dir(core) if not name.startswith("_")} - {
        "gates",
        "planner",
        "shadow",
        "waves",
    }
