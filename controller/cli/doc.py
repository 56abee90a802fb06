"""``edgefleet doc …``: inspect signed documents."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from protocol import ProtocolError

from ..doc_inspect import inspect_document
from .common import EXIT_FAILED, fail

__all__ = ["doc_app"]

doc_app = typer.Typer(help="Inspect signed documents.")


@doc_app.command("verify")
def doc_verify(
    document: Annotated[Path, typer.Argument(help="A signed document (DSSE envelope JSON).")],
    trust_root: Annotated[Path, typer.Option("--trust-root", help="The trusted trust root.")],
) -> None:
    """Say what a signed document is, who signed it, and whether it verifies."""
    try:
        report = inspect_document(trust_root.read_bytes(), document.read_bytes(), datetime.now(UTC))
    except (ProtocolError, OSError) as exc:
        raise fail(str(exc)) from exc
    for line in report.lines():
        typer.echo(line)
    if not report.verified:
        raise typer.Exit(EXIT_FAILED)
