"""``edgefleet tokens …``: API tokens, created on the controller host against its database.

Over HTTP there would be no first admin token to create the others with.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer
from rich.table import Table

from ..errors import ControllerError
from ..local_admin import create_token_locally, list_tokens_locally, revoke_token_locally
from ..rollouts.core import RolloutSpecError, parse_duration
from ..tokens import Role as TokenRole
from .common import ConfigFile, DataDir, console, fail, settings_from

__all__ = ["tokens_app"]

tokens_app = typer.Typer(help="API tokens (run on the controller host).", no_args_is_help=True)


@tokens_app.command("create")
def tokens_create(
    role: Annotated[TokenRole, typer.Option("--role", help="admin, operator, viewer or device.")],
    name: Annotated[str, typer.Option("--name", help="Who or what holds the token.")] = "cli",
    expires: Annotated[
        str | None,
        typer.Option(
            "--expires", help="Valid for this long (30m, 12h, 90d); default: until revoked."
        ),
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Create an API token and print it (only the token, once; it is stored hashed)."""
    lifetime = None
    if expires is not None:
        try:
            lifetime = timedelta(seconds=parse_duration(expires))
        except RolloutSpecError as exc:
            raise typer.BadParameter(str(exc), param_hint="--expires") from exc
    settings = settings_from(config, data_dir=data_dir)
    try:
        token = create_token_locally(settings, name=name, role=role, lifetime=lifetime)
    except (ControllerError, OSError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(token)


@tokens_app.command("list")
def tokens_list(
    include_ended: Annotated[
        bool, typer.Option("--all", help="Also revoked and expired tokens.")
    ] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """List tokens: id, name, role, when created, when they expire or were revoked."""
    settings = settings_from(config, data_dir=data_dir)
    try:
        rows = list_tokens_locally(settings, include_ended=include_ended)
    except (ControllerError, OSError) as exc:
        raise fail(str(exc)) from exc
    table = Table()
    table.add_column("id", no_wrap=True)  # copied into tokens revoke
    for name in ("name", "role", "created", "expires", "revoked"):
        table.add_column(name)
    for row in rows:
        table.add_row(
            row.id,
            row.name,
            row.role,
            f"{row.created_at:%Y-%m-%d %H:%M}",
            "never" if row.expires_at is None else f"{row.expires_at:%Y-%m-%d %H:%M}",
            "-" if row.revoked_at is None else f"{row.revoked_at:%Y-%m-%d %H:%M}",
        )
    console.print(table)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (tokens list).")],
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Revoke a token now: the API and the dashboard refuse it from the next request."""
    settings = settings_from(config, data_dir=data_dir)
    try:
        row = revoke_token_locally(settings, token_id)
    except (ControllerError, OSError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"revoked token {row.id} ({row.name}, {row.role})")
