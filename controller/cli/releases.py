"""``edgefleet release …``: releases signed with a release key kept off the controller.

``prepare`` and ``upload`` talk to the controller (``EDGEFLEET_URL``, ``EDGEFLEET_TOKEN``);
``sign`` runs where the release key is and needs no network. The release key's passphrase
comes from ``EDGEFLEET_RELEASE_KEY_PASSPHRASE`` (else ``EDGEFLEET_KEY_PASSPHRASE``) or a
prompt, never from an argument.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from protocol import Envelope, ProtocolError, Release, Role

from ..errors import WrongPassphraseError
from ..passphrases import decrypt_key
from .common import DEFAULT_URL, Token, Url, console, fail, run_client
from .keys import read_passphrase

__all__ = ["release_app"]

release_app = typer.Typer(help="Prepare, sign (offline) and upload releases.", no_args_is_help=True)


def _ref(ref: str) -> tuple[str, int]:
    name, _, version = ref.partition(":")
    if not name or not version.isdigit():
        raise typer.BadParameter(f"{ref!r} is not NAME:VERSION")
    return name, int(version)


@release_app.command("prepare")
def prepare(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION to release")],
    output: Annotated[Path, typer.Option("--output", help="Where to write the unsigned release.")],
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Profile a version on the controller and write its unsigned release, to sign offline."""
    name, version = _ref(ref)
    path = f"/api/v1/models/{name}/versions/{version}/release/prepare"
    with console.status(f"profiling {name}:{version}", spinner="dots"):
        document = run_client(url, token, lambda c: c.request("POST", path))
    output.write_text(json.dumps(document, sort_keys=True, indent=2) + "\n")
    console.print(f"unsigned release of {name}:{version} written to {output}")
    console.print(f"sign it where the release key is: edgefleet release sign {output} --key ...")


@release_app.command("sign")
def sign(
    unsigned: Annotated[Path, typer.Argument(help="The file 'release prepare' wrote.")],
    key: Annotated[Path, typer.Option("--key", help="The release key (release.key.pem).")],
    output: Annotated[
        Path | None, typer.Option("--output", help="Default: the input with .signed.json")
    ] = None,
) -> None:
    """Sign a prepared release with the release key; no network needed."""
    try:
        release = Release.from_json_obj(json.loads(unsigned.read_text()))
        encrypted = key.read_bytes()
    except (OSError, ValueError, ProtocolError) as exc:
        raise fail(str(exc)) from exc
    passphrase = read_passphrase(Role.RELEASE, confirm=False)
    try:
        signing_key = decrypt_key(encrypted, Role.RELEASE, passphrase, path=key)
    except WrongPassphraseError as exc:
        raise fail(str(exc)) from exc
    target = output or unsigned.with_suffix(".signed.json")
    target.write_bytes(release.sign([signing_key]).to_bytes())
    console.print(f"signed {release.model}:{release.version} with key {signing_key.key_id[:12]}")
    console.print(f"upload it: edgefleet release upload {target}")


@release_app.command("upload")
def upload(
    signed: Annotated[Path, typer.Argument(help="The file 'release sign' wrote.")],
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Store a signed release on the controller; it checks it against the trust root."""
    try:
        envelope = Envelope.from_bytes(signed.read_bytes())
        claimed = Release.from_unverified_envelope(envelope)  # for the address only
    except (OSError, ProtocolError) as exc:
        raise fail(str(exc)) from exc
    path = f"/api/v1/models/{claimed.model}/versions/{claimed.version}/release/signed"
    answer = run_client(url, token, lambda c: c.request("POST", path, json=envelope.to_json_obj()))
    console.print(f"released {claimed.model}:{claimed.version} (sha256 {answer['sha256']})")
