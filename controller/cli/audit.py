"""``edgefleet audit …``: check the audit log's hash chain on the controller host."""

from __future__ import annotations

import typer

from ..errors import ControllerError
from ..local_admin import verify_audit_locally
from .common import EXIT_FAILED, ConfigFile, DataDir, fail, settings_from

__all__ = ["audit_app"]

audit_app = typer.Typer(help="The audit log (run on the controller host).", no_args_is_help=True)


@audit_app.command("verify")
def audit_verify(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Check the audit log's hash chain; exit 1 when a row was edited or deleted."""
    settings = settings_from(config, data_dir=data_dir)
    try:
        count, problems = verify_audit_locally(settings)
    except (ControllerError, OSError) as exc:
        raise fail(str(exc)) from exc
    for problem in problems:
        typer.echo(f"entry {problem.seq}: {problem.problem}")
    if problems:
        typer.echo(f"audit log BROKEN: {len(problems)} problems in {count} entries", err=True)
        raise typer.Exit(EXIT_FAILED)
    typer.echo(f"audit log intact: {count} entries")
