"""``edgefleet alert …``: alert rules on each release's fleet health, and their episodes."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from .common import DEFAULT_URL, AsJson, Token, Url, console, print_json, run_client
from .samples import (
    CaptureBelowConfidence,
    CaptureFor,
    CaptureMaxBytes,
    CapturePerHour,
    capture_body,
)

__all__ = ["alert_app"]

alert_app = typer.Typer(
    help="Alert when a release degrades on the fleet (webhooks model_degraded/recovered).",
    no_args_is_help=True,
)

METRICS = (
    "error_rate, nonfinite_rate, p95_latency_ms, confidence_drop, output_drift_psi, input_drift_psi"
)


@alert_app.command("create")
def create(
    model: Annotated[str, typer.Argument(help="The model whose releases are watched.")],
    metric: Annotated[str, typer.Option(help=f"One of {METRICS}.")],
    above: Annotated[float, typer.Option(help="Fire when the metric goes above this.")],
    window: Annotated[str, typer.Option(help="Telemetry the rule reads, e.g. 10m.")] = "10m",
    min_devices: Annotated[
        int, typer.Option(help="Devices that must have reported in the window.")
    ] = 1,
    min_requests: Annotated[
        int, typer.Option(help="Requests the window must hold to judge it.")
    ] = 100,
    capture_below_confidence: CaptureBelowConfidence = None,
    capture_per_hour: CapturePerHour = 20,
    capture_max_bytes: CaptureMaxBytes = "50MB",
    capture_for: CaptureFor = "1d",
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Create an alert rule on MODEL (optionally capturing samples when it fires)."""
    from ..rollouts.core import RolloutSpecError, parse_duration

    try:
        window_s = parse_duration(window)
    except RolloutSpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="--window") from exc
    body = {
        "model": model,
        "metric": metric,
        "threshold": above,
        "window_s": window_s,
        "min_devices": min_devices,
        "min_requests": min_requests,
    }
    if capture_below_confidence is not None:  # when the rule fires, on its devices
        body["capture"] = capture_body(
            capture_below_confidence, capture_per_hour, capture_max_bytes, capture_for
        )
    rule = run_client(url, token, lambda c: c.request("POST", "/api/v1/alert-rules", json=body))
    if as_json:
        print_json(rule)
        return
    console.print(f"alert rule {rule['id']}: {model} {metric} > {above} over {window}")


@alert_app.command("list")
def list_(
    model: Annotated[str | None, typer.Option(help="Only this model's rules.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Alert rules, and which releases each finds degraded now."""
    params = {"model": model} if model else {}
    rules = run_client(url, token, lambda c: c.request("GET", "/api/v1/alert-rules", params=params))
    if as_json:
        print_json(rules)
        return
    table = Table("id", "model", "metric", "above", "window", "min devices", "firing")
    for rule in rules:
        firing = ", ".join(
            f"v{episode['version']} ({episode['last_value']:.4g})" for episode in rule["firing"]
        )
        table.add_row(
            rule["id"],
            rule["model"],
            rule["metric"],
            f"{rule['threshold']:g}",
            f"{rule['window_s']:g}s",
            str(rule["min_devices"]),
            firing or "-",
        )
    console.print(table)


@alert_app.command("delete")
def delete(
    rule_id: Annotated[str, typer.Argument(help="The rule's id (ar-…).")],
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Delete an alert rule (its open episodes close without a webhook)."""
    run_client(url, token, lambda c: c.request("DELETE", f"/api/v1/alert-rules/{rule_id}"))
    console.print(f"deleted {rule_id}")


@alert_app.command("history")
def history(
    model: Annotated[str | None, typer.Option(help="Only this model's episodes.")] = None,
    open_only: Annotated[bool, typer.Option("--open", help="Only episodes still open.")] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Alert episodes, newest first: what degraded, when, on how many devices."""
    params: dict[str, Any] = {"open": open_only}
    if model:
        params["model"] = model
    episodes = run_client(url, token, lambda c: c.request("GET", "/api/v1/alerts", params=params))
    if as_json:
        print_json(episodes)
        return
    table = Table("rule", "release", "since", "until", "value", "devices", "why")
    for episode in episodes:
        evidence = episode["evidence"]
        table.add_row(
            episode["rule_id"],
            f"{episode['model']}:{episode['version']}",
            episode["started_at"],
            episode["ended_at"] or "open",
            f"{episode['value']:.4g}",
            str(evidence.get("device_count", "")),
            evidence.get("note", ""),
        )
    console.print(table)
