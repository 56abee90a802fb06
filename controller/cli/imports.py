"""``edgefleet model import``: a version from an MLflow model registry, with its lineage.

The controller does the fetching (it must reach ``--mlflow-uri``); this command only
asks it to, and prints the version it recorded.
"""

from __future__ import annotations

import contextlib
import re
from typing import Annotated, Any

import typer

from ..registry.schemas import MODEL_NAME_PATTERN
from .common import DEFAULT_URL, AsJson, Token, Url, console, print_json, run_client
from .lineage_text import lineage_lines
from .models import _print_version, model_app

__all__ = ["import_"]

_SOURCE = re.compile(r"^models:/(?P<name>[^/@]+)(?:/[0-9]+|@[A-Za-z0-9_-]+)$")


def _default_name(source: str) -> str:
    match = _SOURCE.match(source.strip())
    if match is None:
        raise typer.BadParameter(f"{source!r} is not models:/NAME/VERSION or models:/NAME@ALIAS")
    name = match["name"]
    if not re.match(MODEL_NAME_PATTERN, name):
        raise typer.BadParameter(
            f"MLflow's name {name!r} is not a valid edgefleet model name; pass --name"
        )
    return name


@model_app.command("import")
def import_(
    source: Annotated[str, typer.Argument(help="models:/NAME/VERSION or models:/NAME@ALIAS")],
    mlflow_uri: Annotated[
        str,
        typer.Option(
            "--mlflow-uri",
            envvar="MLFLOW_TRACKING_URI",
            help="The MLflow tracking server, as the controller reaches it.",
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(
            "--name", help="The model's name here (default: MLflow's).", show_default=False
        ),
    ] = None,
    channel: Annotated[
        str | None,
        typer.Option("--channel", help="Run this channel's pipeline on the new version."),
    ] = None,
    allow_signature_change: Annotated[
        bool, typer.Option("--allow-signature-change", help="Accept a new I/O signature.")
    ] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Import a model version's ONNX or TFLite file from MLflow as the model's next version."""
    target = name or _default_name(source)
    body: dict[str, Any] = {
        "source": source,
        "mlflow_uri": mlflow_uri,
        "allow_signature_change": allow_signature_change,
        "channel": channel,
    }
    waiting = console.status(f"importing {source}") if not as_json else contextlib.nullcontext()
    with waiting:
        row = run_client(
            url, token, lambda c: c.request("POST", f"/api/v1/models/{target}/import", json=body)
        )
    if as_json:
        print_json(row)
        return
    console.print(f"imported {source} as {target}:{row['version']}")
    _print_version(row)
    for line in lineage_lines(row.get("lineage"), inherited_from=None):
        typer.echo(line)
    if row.get("pipeline"):
        console.print(f"pipeline {row['pipeline']} started in channel {channel}")
