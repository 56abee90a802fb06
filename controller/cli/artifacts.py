"""``edgefleet artifacts …``: the artifact store as files for a static mirror.

``export`` runs on the controller host: it reads the database for the releases and links
(or copies) their artifacts out of the data directory, so it needs no token and works
while the controller is down; a mirror elsewhere is then fed with ``rsync -a DIR/ …``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..db import make_engine, session_scope
from ..errors import ControllerError
from ..registry.artifact_store import ArtifactStore
from ..registry.mirror_export import MirrorExport, export_released_artifacts
from ..settings import Settings
from .common import EXIT_FAILED, EXIT_OK, ConfigFile, DataDir, fail, settings_from

__all__ = ["artifacts_app", "export_artifacts"]

artifacts_app = typer.Typer(
    help="Artifacts for static mirrors (run on the controller host).", no_args_is_help=True
)


def export_artifacts(
    settings: Settings, directory: Path, *, models: list[str], copy: bool
) -> MirrorExport:
    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(engine) as session:
            return export_released_artifacts(
                session,
                ArtifactStore(settings.artifacts_dir),
                directory,
                models=models,
                copy=copy,
            )
    finally:
        engine.dispose()


@artifacts_app.command("export")
def export(
    directory: Annotated[Path, typer.Argument(help="Where to write sha256/<hex> files.")],
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Only this model's releases (repeatable); default: all."),
    ] = None,
    copy: Annotated[
        bool, typer.Option("--copy", help="Copy even where a hard link would do.")
    ] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Write every released artifact as DIR/sha256/<hex>, for a static HTTP server.

    Serve DIR at a base URL and list that URL in the controller's artifact_mirrors. Only
    the model files and check bundles of releases are written; running it again writes
    only what is new or damaged.
    """
    settings = settings_from(config, data_dir=data_dir)
    if not settings.database_url and not (settings.data_dir / "edgefleet.db").exists():
        # Opening it would create an empty database; say what is wrong instead.
        raise fail(f"no controller database in {settings.data_dir}")
    try:
        result = export_artifacts(settings, directory, models=model or [], copy=copy)
    except (ControllerError, OSError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(
        f"{result.artifacts} artifacts of {result.releases} releases in {directory / 'sha256'}: "
        f"{len(result.linked)} linked, {len(result.copied)} copied "
        f"({result.bytes_written} bytes), {len(result.unchanged)} already there"
        + (f", {len(result.repaired)} damaged copies replaced" if result.repaired else "")
    )
    for digest in result.missing:
        typer.echo(f"error: sha256:{digest} is named by a release but not stored", err=True)
    raise typer.Exit(EXIT_FAILED if result.missing else EXIT_OK)
