"""``edgefleet tokens …``: API tokens, created on the controller host against its database.

Over HTTP there would be no first admin token to create the others with.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import ControllerError
from ..local_admin import create_token_locally
from ..tokens import Role as TokenRole
from .common import ConfigFile, DataDir, fail, settings_from

__all__ = ["tokens_app"]

tokens_app = typer.Typer(help="API tokens (run on the controller host).", no_args_is_help=True)


@tokens_app.command("create")
def tokens_create(
    role: Annotated[TokenRole, typer.Option("--role", help="admin, operator, viewer or device.")],
    name: Annotated[str, typer.Option("--name", help="Who or what holds the token.")] = "cli",
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Create an API token and print it (only the token, once; it is stored hashed)."""
    settings = settings_from(config, data_dir=data_dir)
    try:
        token = create_token_locally(settings, name=name, role=role)
    except (ControllerError, OSError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(token)
