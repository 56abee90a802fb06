"""``edgefleet rollout …``: start a rollout, watch its gates, and steer it."""

from __future__ import annotations

import typer

__all__ = ["rollout_app"]

rollout_app = typer.Typer(help="Roll a release out in waves and steer it.", no_args_is_help=True)
