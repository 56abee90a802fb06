"""``edgefleet keys …``: create and rotate the signing keys and the trust root.

Each key has its own passphrase. It comes from the key's variable
(``EDGEFLEET_ROOT_KEY_PASSPHRASE``, ``EDGEFLEET_RELEASE_KEY_PASSPHRASE``,
``EDGEFLEET_DEPLOYMENT_KEY_PASSPHRASE``), else from ``EDGEFLEET_KEY_PASSPHRASE`` (one for
every key), else from a prompt that names the key; never from an argument, so none ends
up in shell history or ``ps``.
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
from ..passphrases import PASSPHRASE_ENV, Passphrase, Passphrases, passphrase_env, unlock_key
from .common import fail

__all__ = ["keys_app", "read_passphrase"]

keys_app = typer.Typer(help="Create and rotate the signing keys and the trust root.")

KeyDir = Annotated[Path, typer.Option("--dir", help="The key directory.")]
LifetimeDays = Annotated[
    int, typer.Option("--expires-days", min=1, help="Days until the trust root expires.")
]


def read_passphrase(role: Role, *, confirm: bool) -> Passphrase:
    """``role``'s passphrase from the environment, else typed at a prompt naming the key."""
    found = Passphrases(os.environ).from_environment(role)
    if found is not None:
        return found
    value = typer.prompt(
        f"Passphrase for the {role.value} key", hide_input=True, confirmation_prompt=confirm
    )
    if not value:
        raise typer.BadParameter(
            f"the {role.value} key's passphrase is empty (set {passphrase_env(role)} or "
            f"{PASSPHRASE_ENV}, or type one)"
        )
    return Passphrase(value.encode("utf-8"), f"the prompt for the {role.value} key")


@keys_app.command("init")
def keys_init(directory: KeyDir, expires_days: LifetimeDays = 365) -> None:
    """Create root, release and deployment keys, each with its own passphrase, and trust
    root version 1."""
    store = KeyStore(directory)
    if store.trust_root_path.exists():  # before asking for three passphrases
        raise fail(f"{store.trust_root_path} exists: refusing to replace keys")
    passphrases = {role: read_passphrase(role, confirm=True).secret for role in Role}
    try:
        trust_root = store.init(
            passphrases=passphrases,
            now=datetime.now(UTC),
            lifetime=timedelta(days=expires_days),
        )
    except (ControllerError, ProtocolError, OSError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"wrote keys for roles root, release, deployment to {directory}")
    typer.echo(f"trust root v{trust_root.version}: {store.trust_root_path}")
    typer.echo(
        "install the trust root on devices; keep root.key.pem and release.key.pem offline "
        "(docs/security.md, production setup)"
    )


@keys_app.command("rotate")
def keys_rotate(
    directory: KeyDir,
    role: Annotated[Role, typer.Option("--role", help="The role whose key is replaced.")],
    expires_days: LifetimeDays = 365,
) -> None:
    """Replace one role's key and write the next trust root, signed for rotation.

    Needs the root key's passphrase and the replaced key's: the new key gets the same one,
    so a controller that reloads its keys after the rotation unlocks the new key too."""
    store = KeyStore(directory)
    try:
        store.load_trust_root()  # no key directory here: say so before asking anything
        # Each passphrase is checked as soon as it is given, so an error names its key.
        root_passphrase = read_passphrase(Role.ROOT, confirm=False)
        unlock_key(store, Role.ROOT, root_passphrase)
        key_passphrase = root_passphrase
        if role is not Role.ROOT:
            key_passphrase = read_passphrase(role, confirm=False)
            unlock_key(store, role, key_passphrase)
        trust_root = store.rotate(
            role,
            root_passphrase=root_passphrase.secret,
            key_passphrase=key_passphrase.secret,
            now=datetime.now(UTC),
            lifetime=timedelta(days=expires_days),
        )
    except (ControllerError, ProtocolError, OSError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(
        f"new {role.value} key written; trust root v{trust_root.version}: {store.trust_root_path}"
    )
