"""``edgefleet keys …``: create and rotate the signing keys and the trust root.

Passphrases come from ``EDGEFLEET_KEY_PASSPHRASE`` or a prompt, never from an argument,
so they do not end up in shell history or ``ps``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from protocol import ProtocolError, Role

from ..errors import ControllerError
from ..keystore import KeyStore
from .common import fail

__all__ = ["PASSPHRASE_ENV", "keys_app", "read_passphrase"]

PASSPHRASE_ENV = "EDGEFLEET_KEY_PASSPHRASE"  # noqa: S105 - a variable name, not a secret

keys_app = typer.Typer(help="Create and rotate the signing keys and the trust root.")

KeyDir = Annotated[Path, typer.Option("--dir", help="The key directory.")]
LifetimeDays = Annotated[
    int, typer.Option("--expires-days", min=1, help="Days until the trust root expires.")
]


def read_passphrase(*, confirm: bool) -> bytes:
    value = os.environ.get(PASSPHRASE_ENV)
    if value is None:
        value = typer.prompt("Key passphrase", hide_input=True, confirmation_prompt=confirm)
    if not value:
        raise typer.BadParameter(f"the passphrase is empty (set {PASSPHRASE_ENV} or type one)")
    return value.encode("utf-8")


@keys_app.command("init")
def keys_init(directory: KeyDir, expires_days: LifetimeDays = 365) -> None:
    """Create root, release and deployment keys and trust root version 1."""
    store = KeyStore(directory)
    try:
        trust_root = store.init(
            passphrase=read_passphrase(confirm=True),
            now=datetime.now(UTC),
            lifetime=timedelta(days=expires_days),
        )
    except (ControllerError, ProtocolError, OSError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"wrote keys for roles root, release, deployment to {directory}")
    typer.echo(f"trust root v{trust_root.version}: {store.trust_root_path}")
    typer.echo("install the trust root on devices; keep root.key.pem offline")


@keys_app.command("rotate")
def keys_rotate(
    directory: KeyDir,
    role: Annotated[Role, typer.Option("--role", help="The role whose key is replaced.")],
    expires_days: LifetimeDays = 365,
) -> None:
    """Replace one role's key and write the next trust root, signed for rotation."""
    store = KeyStore(directory)
    try:
        trust_root = store.rotate(
            role,
            passphrase=read_passphrase(confirm=False),
            now=datetime.now(UTC),
            lifetime=timedelta(days=expires_days),
        )
    except (ControllerError, ProtocolError, OSError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(
        f"new {role.value} key written; trust root v{trust_root.version}: {store.trust_root_path}"
    )
