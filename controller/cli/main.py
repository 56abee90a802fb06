"""``edgefleet``: the operator's command line, one module per command group.

Commands are thin: they read options, call a function, print, and exit with its code.
A group's module is imported only when the group is used: the server, the database layer,
the HTTP client and numpy take about a second to import, which ``edgefleet keys …`` or a
token created on the controller host need not pay (tests run the CLI hundreds of times).
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

import typer
import typer.main
from typer.core import TyperGroup

if TYPE_CHECKING:  # typer's own copy of click, which TyperGroup's methods are typed with
    from typer._click import Command, Context

from .simulator import simulator_app

__all__ = ["app", "main"]

# Group name: (module in this package, its Typer), in the order `edgefleet --help` lists
# them. ``model`` comes from ``imports``, which adds ``model import`` to the models' app.
_GROUPS = {
    "keys": ("keys", "keys_app"),
    "ca": ("ca", "ca_app"),
    "doc": ("doc", "doc_app"),
    "controller": ("serve", "controller_app"),
    "tokens": ("tokens", "tokens_app"),
    "audit": ("audit", "audit_app"),
    "model": ("imports", "model_app"),
    "release": ("releases", "release_app"),
    "devices": ("devices", "devices_app"),
    "rollout": ("rollouts", "rollout_app"),
    "channel": ("channels", "channel_app"),
    "alert": ("alerts", "alert_app"),
    "samples": ("samples", "samples_app"),
    "artifacts": ("artifacts", "artifacts_app"),
}


class _GroupsOnDemand(TyperGroup):
    """The top-level group: builds a command group from its module when it is asked for."""

    def list_commands(self, ctx: Context) -> list[str]:
        return [*_GROUPS, *super().list_commands(ctx)]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        known = super().get_command(ctx, cmd_name)
        if known is not None or cmd_name not in _GROUPS:
            return known
        module_name, attribute = _GROUPS[cmd_name]
        module = importlib.import_module(f"{__package__}.{module_name}")
        group = typer.main.get_group(getattr(module, attribute))
        group.name = cmd_name
        self.add_command(group)
        return group


app = typer.Typer(
    cls=_GroupsOnDemand,
    help="edgefleet: ship ML models to edge fleets safely.",
    no_args_is_help=True,
)
app.add_typer(simulator_app)  # ``edgefleet sim`` and ``edgefleet demo``: cheap to import


def main() -> None:
    sys.exit(app())
