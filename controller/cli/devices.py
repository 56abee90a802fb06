"""``edgefleet devices …``: enroll devices and look at the fleet.

Every command but ``mosquitto-config`` and ``nats-config`` talks to the controller over HTTP
(``EDGEFLEET_URL``, ``EDGEFLEET_TOKEN``). ``mosquitto-config`` runs on the controller host
and reads the database directly, like ``tokens create``.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..devices.broker_auth import write_mosquitto_files
from ..devices.nats_config import write_nats_authorization
from ..devices.selectors import parse_labels
from ..errors import ControllerError
from ..rollouts.core import RolloutSpecError, parse_duration
from ..settings import load_settings
from .common import (
    DEFAULT_URL,
    AsJson,
    ConfigFile,
    DataDir,
    Token,
    Url,
    console,
    print_json,
    run_client,
)

__all__ = ["DEFAULT_AGENT_DATA_DIR", "devices_app"]

devices_app = typer.Typer(help="Enroll devices and look at the fleet.", no_args_is_help=True)

DEFAULT_AGENT_DATA_DIR = "/var/lib/edgefleet-agent"
EXIT_FAILED = 1


def _labels(text: str) -> dict[str, str]:
    try:
        return parse_labels(text)
    except ControllerError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _release(model: str | None, version: int | None) -> str:
    if model is None:
        return "-"
    return f"{model}:{version}" if version is not None else model


def _labels_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def _desired_text(model: dict[str, Any]) -> str:
    if model["desired_remove"]:
        return "remove"
    if model["desired_version"] is None:
        return "-"
    return _release(model["model"], model["desired_version"]) + (
        " (rollback)" if model["desired_rollback"] else ""
    )


def _models_text(models: list[dict[str, Any]], key: str) -> str:
    """One line per model: what it runs (``key`` active) or what it should (desired)."""
    if not models:
        return "-"
    if key == "desired":
        return "\n".join(_desired_text(m) for m in models)
    return "\n".join(_release(m["model"], m["active_version"]) for m in models)


def _devices_table(rows: list[dict[str, Any]]) -> Table:
    table = Table("device", "online", "labels", "running", "desired", "phase", "last seen")
    for row in rows:
        table.add_row(
            row["id"],
            "yes" if row["online"] else "no",
            _labels_text(row["labels"]),
            _models_text(row["models"], "active"),
            _models_text(row["models"], "desired"),
            row["phase"] or "-",
            row["last_seen_at"] or "-",
        )
    return table


def _models_table(models: list[dict[str, Any]]) -> Table:
    table = Table(
        "model", "running", "desired", "phase", "last good", "sequence", "rollout", title="models"
    )
    for m in models:
        sequence = m["desired_sequence"]
        table.add_row(
            m["model"],
            "-" if m["active_version"] is None else str(m["active_version"]),
            _desired_text(m),
            m["phase"] or "-",
            "-" if m["last_good_version"] is None else str(m["last_good_version"]),
            "-" if sequence is None else f"{sequence} (expires {m['desired_expires_at']})",
            m["desired_rollout_id"] or "-",
        )
    return table


@devices_app.command("enroll")
def enroll(
    labels: Annotated[
        str, typer.Option("--labels", help="Labels of the device, e.g. site=berlin,tier=lab.")
    ] = "",
    device_id: Annotated[
        str | None,
        typer.Option("--device-id", help="The device's id (default: it proposes or gets one)."),
    ] = None,
    ttl: Annotated[
        str | None, typer.Option("--ttl", help="How long the token is valid: 30m, 1h, 2d.")
    ] = None,
    agent_data_dir: Annotated[
        str, typer.Option("--agent-data-dir", help="The data directory on the device.")
    ] = DEFAULT_AGENT_DATA_DIR,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Create a one-time enrollment token and print the command to run on the device."""
    body: dict[str, Any] = {"labels": _labels(labels), "device_id": device_id}
    if ttl is not None:
        try:
            body["ttl_s"] = parse_duration(ttl)
        except RolloutSpecError as exc:
            raise typer.BadParameter(str(exc), param_hint="--ttl") from exc
    answer = run_client(
        url, token, lambda c: c.request("POST", "/api/v1/enrollment-tokens", json=body)
    )
    words = [
        "edgefleet-agent",
        "enroll",
        "--controller",
        answer["controller_url"],
        "--token",
        answer["token"],
        "--data-dir",
        agent_data_dir,
        "--trust-root-sha256",
        answer["trust_root_sha256"],
    ]
    if answer.get("ca_sha256"):
        words += ["--ca-sha256", answer["ca_sha256"]]
    command = shlex.join(words)
    if as_json:
        print_json({**answer, "command": command})
        return
    who = f"device {answer['device_id']}" if answer["device_id"] else "one device"
    console.print(f"enrollment token for {who}, valid until {answer['expires_at']} (shown once):")
    console.print(f"  {answer['token']}", markup=False, highlight=False)
    console.print("on the device, run:")
    console.print(f"  {command}", markup=False, highlight=False)
    console.print("then start the agent:")
    run = shlex.join(["edgefleet-agent", "run", "--config", f"{agent_data_dir}/agent.toml"])
    console.print(f"  {run}", markup=False, highlight=False)


@devices_app.command("list")
def list_(
    selector: Annotated[
        str, typer.Option("--selector", help="Label selector, e.g. site=berlin,tier!=lab.")
    ] = "",
    online: Annotated[
        bool | None, typer.Option("--online/--offline", help="Only online (offline) devices.")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Running this model.")] = None,
    include_decommissioned: Annotated[
        bool, typer.Option("--all", help="Also decommissioned devices.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 1000,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """The fleet's devices, by id."""
    params: dict[str, Any] = {"selector": selector, "limit": limit}
    if online is not None:
        params["online"] = str(online).lower()
    if model is not None:
        params["model"] = model
    if include_decommissioned:
        params["include_decommissioned"] = "true"
    rows = run_client(url, token, lambda c: c.request("GET", "/api/v1/devices", params=params))
    if as_json:
        print_json(rows)
        return
    console.print(_devices_table(rows))


@devices_app.command("show")
def show(
    device_id: Annotated[str, typer.Argument(help="The device's id.")],
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """One device: state, desired release, deployment history, recent statistics."""
    row = run_client(url, token, lambda c: c.request("GET", f"/api/v1/devices/{device_id}"))
    if as_json:
        print_json(row)
        return
    console.print(_devices_table([row]))
    if row["models"]:
        console.print(_models_table(row["models"]))
    desired = row["desired"]
    console.print(
        f"desired state: sequence {desired['sequence'] or '-'},"
        f" published {desired['published_sequence'] or '-'}"
    )
    if row.get("trust_root_version"):
        console.print(
            f"trust root: v{row['trust_root_version']}, expires {row['trust_root_expires_at']}"
        )
    certificate = row.get("certificate")
    if certificate:
        console.print(
            f"certificate: serial {certificate['serial']}, expires {certificate['expires_at']}"
        )
    if row["decommissioned_at"]:
        console.print(f"decommissioned at {row['decommissioned_at']}")
    if row["assignments"]:
        table = Table("rollout", "release", "wave", "outcome", "reason", title="deployments")
        for a in row["assignments"]:
            table.add_row(
                a["rollout_id"],
                _release(a["model"], a["version"]),
                str(a["wave"]),
                a["outcome"],
                a["reason"] or "",
            )
        console.print(table)
    if row["events"]:
        table = Table("seq", "at", "event", "release", "reason", title="recent events")
        for e in row["events"][:10]:
            table.add_row(
                str(e["seq"]),
                e["at"],
                e["type"],
                _release(e["model_name"], e["version"]),
                e["reason"] or "",
            )
        console.print(table)
    if row["telemetry"]:
        table = Table("window", "release", "requests", "errors", "p95 ms", title="statistics")
        for w in row["telemetry"][:10]:
            p95 = w["p95_ms"]
            table.add_row(
                w["window_start"],
                _release(w["model_name"], w["version"]),
                str(w["requests"]),
                str(w["errors"]),
                "-" if p95 is None else f"{p95:.2f}",
            )
        console.print(table)


@devices_app.command("label")
def label(
    device_id: Annotated[str, typer.Argument(help="The device's id.")],
    labels: Annotated[str, typer.Argument(help="Labels to set, e.g. site=x,tier=y.")] = "",
    remove: Annotated[
        list[str] | None, typer.Option("--remove", help="A label key to remove (repeatable).")
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Set and remove labels of a device."""
    body = {"set": _labels(labels), "remove": list(remove or [])}
    if not body["set"] and not body["remove"]:
        raise typer.BadParameter("give labels to set, or --remove KEY")
    row = run_client(
        url, token, lambda c: c.request("PATCH", f"/api/v1/devices/{device_id}/labels", json=body)
    )
    if as_json:
        print_json(row)
        return
    console.print(f"{row['id']}: {_labels_text(row['labels'])}", markup=False)


@devices_app.command("remove-model")
def remove_model(
    device_id: Annotated[str, typer.Argument(help="The device's id.")],
    model: Annotated[str, typer.Argument(help="The model to remove from it.")],
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Order a device to stop serving a model and delete its files (a signed removal)."""
    row = run_client(
        url,
        token,
        lambda c: c.request("POST", f"/api/v1/devices/{device_id}/models/{model}/remove"),
    )
    if as_json:
        print_json(row)
        return
    sequence = next((m["desired_sequence"] for m in row["models"] if m["model"] == model), None)
    console.print(f"{row['id']}: removal of {model} signed (sequence {sequence})", markup=False)


@devices_app.command("decommission")
def decommission(
    device_id: Annotated[str, typer.Argument(help="The device's id.")],
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Retire a device: hide it, revoke its API token; it can enroll again later."""
    row = run_client(url, token, lambda c: c.request("DELETE", f"/api/v1/devices/{device_id}"))
    if as_json:
        print_json(row)
        return
    console.print(f"decommissioned {row['id']} at {row['decommissioned_at']}", markup=False)


@devices_app.command("mosquitto-config")
def mosquitto_config(
    passwords: Annotated[Path, typer.Option("--passwords", help="Password file to write.")],
    acl: Annotated[Path, typer.Option("--acl", help="ACL file to write.")],
    tls_config: Annotated[
        Path | None,
        typer.Option(
            "--tls-config",
            help="With a CA: the Mosquitto configuration to write (default: "
            "edgefleet-tls.conf beside the ACL file; the certificates and the CRL go there).",
            envvar="EDGEFLEET_MOSQUITTO_TLS_CONFIG",
            show_default=False,
        ),
    ] = None,
    password_port: Annotated[
        int | None,
        typer.Option(
            "--password-port",
            help="With a CA and device_password_login: the port of the TLS listener for "
            "devices that log in with a password (default: mqtts_port + 1).",
            envvar="EDGEFLEET_MOSQUITTO_PASSWORD_PORT",
            min=1,
            max=65535,
            show_default=False,
        ),
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Write Mosquitto's password and ACL files from the database (on the controller host);
    with a CA (edgefleet ca init) also its TLS listeners, certificates and CRL.

    Reload Mosquitto afterwards (SIGHUP) so that it reads them. The CA key's passphrase
    comes from EDGEFLEET_CA_KEY_PASSPHRASE.
    """
    raise typer.Exit(_mosquitto_config(passwords, acl, tls_config, password_port, data_dir, config))


@devices_app.command("nats-config")
def nats_config(
    out: Annotated[
        Path, typer.Option("--out", help="The authorization file to write (NATS `include`s it).")
    ],
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Write the NATS users and permissions of the fleet from the database (on the
    controller host): each device on its own subjects, the controller on all.

    Every NATS server of the cluster includes the file; reload them afterwards (SIGHUP).
    """
    try:
        settings = load_settings(config_file=config, overrides={"data_dir": data_dir})
        export = write_nats_authorization(settings, out)
    except (ControllerError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from exc
    typer.echo(
        f"wrote {out} ({export.devices} devices and the controller user {export.controller_user})"
    )
    if export.without_hash:
        typer.echo(
            f"note: {len(export.without_hash)} devices enrolled before NATS passwords were kept "
            f"are left out; enroll them again: {', '.join(export.without_hash[:10])}",
            err=True,
        )


def _mosquitto_config(
    passwords: Path,
    acl: Path,
    tls_config: Path | None,
    password_port: int | None,
    data_dir: Path | None,
    config: Path | None,
) -> int:
    try:
        settings = load_settings(config_file=config, overrides={"data_dir": data_dir})
        export = write_mosquitto_files(
            settings,
            passwords=passwords,
            acl=acl,
            tls_config=tls_config,
            password_port=password_port,
        )
    except (ControllerError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        return EXIT_FAILED
    controller = (
        f" and the controller user {export.controller_user}" if export.controller_user else ""
    )
    typer.echo(f"wrote {passwords} ({export.devices} devices{controller}) and {acl}")
    if export.tls is not None:
        listeners = f"certificates on port {settings.mqtts_port}"
        if export.tls.password_port is not None:
            listeners += f", passwords on port {export.tls.password_port}"
        typer.echo(
            f"wrote {export.tls.config} ({listeners}), the certificates and the CRL "
            f"({export.tls.revoked} revoked) beside {acl}"
        )
    elif not export.controller_user:
        typer.echo(
            "note: mqtt_username/mqtt_password are not set, so the controller has no login "
            "in these files",
            err=True,
        )
    return 0
