"""``edgefleet channel …``: channels that ship every version pushed into them by policy."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .common import DEFAULT_URL, AsJson, Token, Url, console, print_json, run_client
from .rollouts import (
    MaxShadowDistance,
    MaxShadowLatencyRatio,
    MinAgreement,
    MinReporting,
    OnFailure,
    ProbationMaxDriftPsi,
    ProbationMaxExtension,
    ProbationMinRequests,
    ProbationWindow,
    ReportTimeout,
    RequireObserved,
    Selector,
    Shadow,
    ShadowCpu,
    ShadowFor,
    ShadowMinSamples,
    Soak,
    Waves,
    policy_body,
)
from .samples import CaptureBelowConfidence, CaptureFor, CaptureMaxBytes, CapturePerHour

__all__ = ["channel_app"]

channel_app = typer.Typer(
    help="Channels: a version pushed or imported into one ships by its policy.",
    no_args_is_help=True,
)

ChannelName = Annotated[str, typer.Argument(help="The channel's name.")]


@channel_app.command("create")
def create(
    name: ChannelName,
    variant: Annotated[
        list[str] | None,
        typer.Option(
            help="A variant to derive (int8-dynamic, int8-static, fp16, tflite-int8-dynamic); "
            "repeat it to try several in order: the first the quality gate accepts ships. "
            "None: the version itself ships."
        ),
    ] = None,
    approval: Annotated[
        str, typer.Option(help="required: an operator approves each release; none: no one.")
    ] = "none",
    selector: Selector = "",
    waves: Waves = "1,10%,50%,100%",
    soak: Soak = "5m",
    min_reporting: MinReporting = "1",
    report_timeout: ReportTimeout = "30m",
    on_failure: OnFailure = "abort",
    require_observed: RequireObserved = False,
    probation_window: ProbationWindow = "5m",
    probation_min_requests: ProbationMinRequests = 100,
    probation_max_extension: ProbationMaxExtension = "15m",
    probation_max_drift_psi: ProbationMaxDriftPsi = 0.25,
    shadow: Shadow = None,
    shadow_for: ShadowFor = "10m",
    shadow_min_samples: ShadowMinSamples = 200,
    shadow_cpu: ShadowCpu = 0.2,
    min_agreement: MinAgreement = 0.98,
    max_shadow_latency_ratio: MaxShadowLatencyRatio = 1.5,
    max_shadow_distance: MaxShadowDistance = None,
    capture_below_confidence: CaptureBelowConfidence = None,
    capture_per_hour: CapturePerHour = 20,
    capture_max_bytes: CaptureMaxBytes = "50MB",
    capture_for: CaptureFor = "1d",
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Create a channel. Push or import a version with --channel NAME and it is varied,
    gated, approved (with --approval required), released and rolled out by itself."""
    options = dict(locals())
    for key in ("name", "variant", "approval", "url", "token", "as_json"):
        options.pop(key)
    body = {
        "name": name,
        "variants": variant or [],
        "approval": approval,
        "rollout": policy_body(**options),
    }
    answer = run_client(url, token, lambda c: c.request("POST", "/api/v1/channels", json=body))
    if as_json:
        print_json(answer)
        return
    console.print(f"channel [bold]{answer['name']}[/bold] created")
    _print_channel(answer)


@channel_app.command("list")
def list_(url: Url = DEFAULT_URL, token: Token = None, as_json: AsJson = False) -> None:
    """Every channel and where its latest pipeline is."""
    answer = run_client(url, token, lambda c: c.request("GET", "/api/v1/channels"))
    if as_json:
        print_json(answer)
        return
    table = Table("channel", "selector", "variants", "approval", "paused", "latest pipeline")
    for channel in answer:
        latest = channel["pipelines"][0] if channel["pipelines"] else None
        table.add_row(
            channel["name"],
            channel["selector"] or "(all)",
            ", ".join(channel["variants"]) or "-",
            channel["approval"],
            "yes" if channel["paused"] else "no",
            _pipeline_line(latest) if latest else "-",
        )
    console.print(table)


@channel_app.command("show")
def show(
    name: ChannelName, url: Url = DEFAULT_URL, token: Token = None, as_json: AsJson = False
) -> None:
    """A channel's policy and each version's path through it, newest first."""
    answer = run_client(url, token, lambda c: c.request("GET", f"/api/v1/channels/{name}"))
    if as_json:
        print_json(answer)
        return
    _print_channel(answer)
    for pipeline in answer["pipelines"]:
        console.print(f"\n[bold]{pipeline['id']}[/bold]  {_pipeline_line(pipeline)}")
        for entry in pipeline["history"]:
            # Details quote model files and converters: printed as text, never as markup.
            console.print(
                f"  {entry['at'][:19]}  {entry['step']:<12} {entry['status']:<10} "
                f"{entry['detail']}",
                markup=False,
            )


@channel_app.command("pause")
def pause(name: ChannelName, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Start no pipeline and take no further step (a running rollout goes on)."""
    run_client(url, token, lambda c: c.request("POST", f"/api/v1/channels/{name}/pause"))
    console.print(f"channel {name} paused")


@channel_app.command("resume")
def resume(name: ChannelName, url: Url = DEFAULT_URL, token: Token = None) -> None:
    run_client(url, token, lambda c: c.request("POST", f"/api/v1/channels/{name}/resume"))
    console.print(f"channel {name} resumed")


@channel_app.command("approve")
def approve(
    name: ChannelName,
    pipeline: Annotated[
        str | None, typer.Option(help="The pipeline to approve (default: the one waiting).")
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Approve the release the channel's pipeline waits on; it is signed and rolled out."""
    path = (
        f"/api/v1/pipelines/{pipeline}/approve" if pipeline else f"/api/v1/channels/{name}/approve"
    )
    answer = run_client(url, token, lambda c: c.request("POST", path))
    if as_json:
        print_json(answer)
        return
    console.print(f"{answer['id']} approved: {_pipeline_line(answer)}")


def _print_channel(channel: dict[str, Any]) -> None:
    policy = channel["policy"]
    console.print(
        f"[bold]{channel['name']}[/bold]  selector: {channel['selector'] or '(all)'}  "
        f"variants: {', '.join(channel['variants']) or '(the version itself)'}  "
        f"approval: {channel['approval']}  paused: {'yes' if channel['paused'] else 'no'}"
    )
    shadow = "  shadow stage first" if policy.get("shadow") else ""
    console.print(
        f"rollout: waves {policy['waves']}, soak {policy['soak_s']:g} s, "
        f"on failure {policy['on_failure']}{shadow}"
    )


def _pipeline_line(pipeline: dict[str, Any]) -> str:
    released = pipeline["release_version"]
    what = f"{pipeline['model']}:{pipeline['source_version']}"
    if released is not None and released != pipeline["source_version"]:
        what += f" -> {pipeline['model']}:{released}"
    line = f"{what}  {pipeline['status']} at {pipeline['step']}"
    if pipeline["rollout_id"]:
        line += f"  rollout {pipeline['rollout_id']}"
    if pipeline["reason"]:
        line += f"  ({pipeline['reason']})"
    return escape(line)  # reasons quote model files and converters: text, never markup
