"""``edgefleet audit …``: check the audit log's hash chain on the controller host."""

from __future__ import annotations

from typing import Annotated

import typer

from ..audit import AuditAnchor
from ..errors import ControllerError
from ..local_admin import audit_head_locally, verify_audit_locally
from .common import EXIT_FAILED, ConfigFile, DataDir, fail, settings_from

__all__ = ["audit_app"]

audit_app = typer.Typer(help="The audit log (run on the controller host).", no_args_is_help=True)


@audit_app.command("head")
def audit_head(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Print the last entry as SEQ:SHA256: export it elsewhere, then verify against it."""
    settings = settings_from(config, data_dir=data_dir)
    try:
        typer.echo(str(audit_head_locally(settings)))
    except (ControllerError, OSError) as exc:
        raise fail(str(exc)) from exc


@audit_app.command("verify")
def audit_verify(
    anchor: Annotated[
        list[str] | None,
        typer.Option("--anchor", help="SEQ:SHA256 that 'audit head' printed earlier (repeatable)."),
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Check the audit log's hash chain; exit 1 when a row was edited or deleted, or the
    log no longer holds an anchor."""
    try:
        anchors = tuple(AuditAnchor.parse(text) for text in anchor or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--anchor") from exc
    settings = settings_from(config, data_dir=data_dir)
    try:
        count, problems = verify_audit_locally(settings, anchors)
    except (ControllerError, OSError) as exc:
        raise fail(str(exc)) from exc
    for problem in problems:
        typer.echo(f"entry {problem.seq}: {problem.problem}")
    if problems:
        typer.echo(f"audit log BROKEN: {len(problems)} problems in {count} entries", err=True)
        raise typer.Exit(EXIT_FAILED)
    if anchors:
        last = max(anchors, key=lambda a: a.seq)
        typer.echo(f"audit log intact: {count} entries, anchored at entry {last.seq}")
    else:
        typer.echo(
            f"audit log intact: {count} entries, not anchored (whoever can write the "
            "database could rewrite it unseen: export 'edgefleet audit head' elsewhere and "
            "pass it with --anchor)"
        )
