"""``edgefleet sim`` and ``edgefleet demo``: the fleet simulator, in its own process.

The simulator imports the agent, which the controller may not (ARCHITECTURE.md §2): these
two commands hand their arguments to ``python -m simulator`` in place of this process.
"""

from __future__ import annotations

import os
import sys

import typer

from .common import fail

__all__ = ["simulator_app"]

# Its commands join the top-level app (``edgefleet sim``, not ``edgefleet simulator sim``).
simulator_app = typer.Typer()
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@simulator_app.command("sim", context_settings=_PASS_THROUGH, add_help_option=False)
def sim(ctx: typer.Context) -> None:
    """Run a fleet scenario with simulated devices (see `edgefleet sim --help`)."""
    _exec_simulator("sim", ctx.args)


@simulator_app.command("demo", context_settings=_PASS_THROUGH, add_help_option=False)
def demo(ctx: typer.Context) -> None:
    """The whole system on this machine: controller, broker, 50 devices, two rollouts."""
    _exec_simulator("demo", ctx.args)


def _exec_simulator(command: str, args: list[str]) -> None:
    argv = [sys.executable, "-m", "simulator", command, *args]
    try:
        os.execv(sys.executable, argv)  # noqa: S606 - our own interpreter and module
    except OSError as exc:
        raise fail(f"cannot start the simulator: {exc}") from exc
