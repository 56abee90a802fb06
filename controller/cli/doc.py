"""``edgefleet doc …``: inspect signed documents."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from protocol import Deployment, Envelope, ProtocolError, Release

from ..doc_inspect import inspect_document
from .common import EXIT_FAILED, fail
from .lineage_text import provenance_lines

__all__ = ["doc_app"]

doc_app = typer.Typer(help="Inspect signed documents.")


@doc_app.command("verify")
def doc_verify(
    document: Annotated[Path, typer.Argument(help="A signed document (DSSE envelope JSON).")],
    trust_root: Annotated[Path, typer.Option("--trust-root", help="The trusted trust root.")],
) -> None:
    """Say what a signed document is, who signed it, and whether it verifies; for a
    release (or a deployment's), also where its model came from."""
    try:
        document_bytes = document.read_bytes()
        report = inspect_document(trust_root.read_bytes(), document_bytes, datetime.now(UTC))
    except (ProtocolError, OSError) as exc:
        raise fail(str(exc)) from exc
    for line in report.lines():
        typer.echo(line)
    if not report.verified:
        raise typer.Exit(EXIT_FAILED)
    if report.kind in (Release.__name__, Deployment.__name__):
        for line in provenance_lines(_verified_release(document_bytes).provenance):
            typer.echo(line)


def _verified_release(document_bytes: bytes) -> Release:
    """The release in a document ``inspect_document`` has verified (it or its deployment)."""
    envelope = Envelope.from_bytes(document_bytes)
    if envelope.payload_type == Deployment.PAYLOAD_TYPE:
        envelope = Deployment.from_unverified_envelope(envelope).release_envelope()
    return Release.from_unverified_envelope(envelope)
