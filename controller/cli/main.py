"""``edgefleet``: the operator's command line.

Commands are thin: they read options, call a function, print, and exit with its code.
Passphrases come from ``EDGEFLEET_KEY_PASSPHRASE`` or a prompt, never from an argument,
so they do not end up in shell history or ``ps``.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from protocol import ProtocolError, Role

from ..doc_inspect import inspect_document
from ..errors import ControllerError
from ..keystore import KeyStore
from ..local_admin import create_token_locally, verify_audit_locally
from ..server import serve
from ..settings import Settings, load_settings
from ..tokens import Role as TokenRole
from .devices import devices_app
from .models import model_app
from .rollouts import rollout_app

__all__ = ["app", "main"]

PASSPHRASE_ENV = "EDGEFLEET_KEY_PASSPHRASE"  # noqa: S105 - a variable name, not a secret
EXIT_OK = 0
EXIT_FAILED = 1

app = typer.Typer(help="edgefleet: ship ML models to edge fleets safely.", no_args_is_help=True)
keys_app = typer.Typer(help="Create and rotate the signing keys and the trust root.")
doc_app = typer.Typer(help="Inspect signed documents.")
controller_app = typer.Typer(help="Run the controller.", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens (run on the controller host).", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log (run on the controller host).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(doc_app, name="doc")
app.add_typer(controller_app, name="controller")
app.add_typer(tokens_app, name="tokens")
app.add_typer(audit_app, name="audit")
app.add_typer(model_app, name="model")
app.add_typer(devices_app, name="devices")
app.add_typer(rollout_app, name="rollout")

KeyDir = Annotated[Path, typer.Option("--dir", help="The key directory.")]
LifetimeDays = Annotated[
    int, typer.Option("--expires-days", min=1, help="Days until the trust root expires.")
]


def _passphrase(*, confirm: bool) -> bytes:
    value = os.environ.get(PASSPHRASE_ENV)
    if value is None:
        value = typer.prompt("Key passphrase", hide_input=True, confirmation_prompt=confirm)
    if not value:
        raise typer.BadParameter(f"the passphrase is empty (set {PASSPHRASE_ENV} or type one)")
    return value.encode("utf-8")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_FAILED)


@keys_app.command("init")
def keys_init(directory: KeyDir, expires_days: LifetimeDays = 365) -> None:
    """Create root, release and deployment keys and trust root version 1."""
    store = KeyStore(directory)
    try:
        trust_root = store.init(
            passphrase=_passphrase(confirm=True),
            now=datetime.now(UTC),
            lifetime=timedelta(days=expires_days),
        )
    except (ControllerError, ProtocolError, OSError) as exc:
        raise _fail(str(exc)) from exc
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
            passphrase=_passphrase(confirm=False),
            now=datetime.now(UTC),
            lifetime=timedelta(days=expires_days),
        )
    except (ControllerError, ProtocolError, OSError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(
        f"new {role.value} key written; trust root v{trust_root.version}: {store.trust_root_path}"
    )


@doc_app.command("verify")
def doc_verify(
    document: Annotated[Path, typer.Argument(help="A signed document (DSSE envelope JSON).")],
    trust_root: Annotated[Path, typer.Option("--trust-root", help="The trusted trust root.")],
) -> None:
    """Say what a signed document is, who signed it, and whether it verifies."""
    try:
        report = inspect_document(trust_root.read_bytes(), document.read_bytes(), datetime.now(UTC))
    except (ProtocolError, OSError) as exc:
        raise _fail(str(exc)) from exc
    for line in report.lines():
        typer.echo(line)
    if not report.verified:
        raise typer.Exit(EXIT_FAILED)


DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (env EDGEFLEET_DATA_DIR).", show_default=False),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option("--config", help="TOML settings file (env EDGEFLEET_CONFIG).", show_default=False),
]


def _settings(config: Path | None, **overrides: object) -> Settings:
    try:
        return load_settings(config_file=config, overrides=overrides)
    except ControllerError as exc:
        raise _fail(str(exc)) from exc


def _configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("EDGEFLEET_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # amqtt logs every packet and state change at INFO.
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@controller_app.command("serve")
def controller_serve(
    host: Annotated[str | None, typer.Option(help="HTTP address (env EDGEFLEET_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (env EDGEFLEET_PORT).")] = None,
    data_dir: DataDir = None,
    broker: Annotated[
        str | None,
        typer.Option(help="'embedded' or mqtt://host:port (env EDGEFLEET_BROKER)."),
    ] = None,
    mqtt_port: Annotated[
        int | None, typer.Option(help="Embedded broker port (env EDGEFLEET_MQTT_PORT).")
    ] = None,
    config: ConfigFile = None,
) -> None:
    """Serve the API (and the embedded MQTT broker) until SIGTERM or SIGINT."""
    _configure_logging()
    settings = _settings(
        config, host=host, port=port, data_dir=data_dir, broker=broker, mqtt_port=mqtt_port
    )
    raise typer.Exit(serve(settings))


@tokens_app.command("create")
def tokens_create(
    role: Annotated[TokenRole, typer.Option("--role", help="admin, operator, viewer or device.")],
    name: Annotated[str, typer.Option("--name", help="Who or what holds the token.")] = "cli",
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Create an API token and print it (only the token, once; it is stored hashed)."""
    settings = _settings(config, data_dir=data_dir)
    try:
        token = create_token_locally(settings, name=name, role=role)
    except (ControllerError, OSError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(token)


@audit_app.command("verify")
def audit_verify(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Check the audit log's hash chain; exit 1 when a row was edited or deleted."""
    settings = _settings(config, data_dir=data_dir)
    try:
        count, problems = verify_audit_locally(settings)
    except (ControllerError, OSError) as exc:
        raise _fail(str(exc)) from exc
    for problem in problems:
        typer.echo(f"entry {problem.seq}: {problem.problem}")
    if problems:
        typer.echo(f"audit log BROKEN: {len(problems)} problems in {count} entries", err=True)
        raise typer.Exit(EXIT_FAILED)
    typer.echo(f"audit log intact: {count} entries")


# The simulator imports the agent, which the controller may not (ARCHITECTURE.md §2): these
# two commands hand their arguments to ``python -m simulator`` in place of this process.
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command("sim", context_settings=_PASS_THROUGH, add_help_option=False)
def sim(ctx: typer.Context) -> None:
    """Run a fleet scenario with simulated devices (see `edgefleet sim --help`)."""
    _exec_simulator("sim", ctx.args)


@app.command("demo", context_settings=_PASS_THROUGH, add_help_option=False)
def demo(ctx: typer.Context) -> None:
    """The whole system on this machine: controller, broker, 50 devices, two rollouts."""
    _exec_simulator("demo", ctx.args)


def _exec_simulator(command: str, args: list[str]) -> None:
    argv = [sys.executable, "-m", "simulator", command, *args]
    try:
        os.execv(sys.executable, argv)  # noqa: S606 - our own interpreter and module
    except OSError as exc:
        raise _fail(f"cannot start the simulator: {exc}") from exc


def main() -> None:
    sys.exit(app())
