"""``edgefleet devices …``: enroll devices and look at the fleet."""

from __future__ import annotations

import typer

__all__ = ["devices_app"]

devices_app = typer.Typer(help="Enroll devices and look at the fleet.", no_args_is_help=True)
