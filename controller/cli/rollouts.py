"""``edgefleet rollout …``: start a rollout, watch its gates, and steer it."""

from __future__ import annotations

import time
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

__all__ = ["policy_body", "rollout_app"]

rollout_app = typer.Typer(help="Roll a release out in waves and steer it.", no_args_is_help=True)

FINAL_STATUSES = ("completed", "aborted", "superseded")


Selector = Annotated[
    str, typer.Option(help="Label selector, e.g. site=berlin,tier!=lab (empty: all).")
]
Waves = Annotated[str, typer.Option(help="Cumulative wave sizes.")]
Soak = Annotated[str, typer.Option(help="How long each wave is watched, e.g. 5m.")]
MinReporting = Annotated[
    str, typer.Option(help="Devices of a wave that must report to judge it (3 or 80%).")
]
ReportTimeout = Annotated[
    str, typer.Option(help="A device silent this long after its assignment has failed.")
]
OnFailure = Annotated[str, typer.Option(help="abort or pause when a gate fails.")]
RequireObserved = Annotated[
    bool, typer.Option(help="Count commits that probation could not observe as failures.")
]
ProbationWindow = Annotated[str, typer.Option(help="How long each device watches the new model.")]
ProbationMinRequests = Annotated[
    int, typer.Option(help="Requests a device needs to judge the new model.")
]
ProbationMaxExtension = Annotated[
    str,
    typer.Option(
        help="How long a device with too few requests waits for them before it commits unobserved."
    ),
]
ProbationMaxDriftPsi = Annotated[
    float, typer.Option(help="Largest input/output drift (PSI) a device accepts.")
]
Shadow = Annotated[
    str | None,
    typer.Option(
        help="Start with a shadow stage on this many devices (3 or 10%): they run the "
        "release beside what they serve, on copies of live requests, before the canary."
    ),
]
ShadowFor = Annotated[str, typer.Option(help="How long the shadow stage watches.")]
ShadowMinSamples = Annotated[
    int, typer.Option(help="Samples the shadow stage needs to judge the release.")
]
ShadowCpu = Annotated[
    float, typer.Option(help="Share of the time a device may spend running the shadow.")
]
MinAgreement = Annotated[
    float, typer.Option(help="Least top-1 agreement with the serving model (classifiers).")
]
MaxShadowLatencyRatio = Annotated[
    float, typer.Option(help="Largest median latency of the shadow over the serving one.")
]
MaxShadowDistance = Annotated[
    float | None,
    typer.Option(help="Largest mean relative L1 distance of the outputs (default: off)."),
]


def policy_body(
    *,
    selector: str,
    waves: str,
    soak: str,
    min_reporting: str,
    report_timeout: str,
    on_failure: str,
    require_observed: bool,
    probation_window: str,
    probation_min_requests: int,
    probation_max_extension: str,
    probation_max_drift_psi: float,
    shadow: str | None,
    shadow_for: str,
    shadow_min_samples: int,
    shadow_cpu: float,
    min_agreement: float,
    max_shadow_latency_ratio: float,
    max_shadow_distance: float | None,
    capture_below_confidence: float | None,
    capture_per_hour: int,
    capture_max_bytes: str,
    capture_for: str,
) -> dict[str, Any]:
    """The API's rollout policy (``RolloutPolicyIn``) from the command's options."""
    from ..rollouts.core import RolloutSpecError, parse_duration

    try:
        window_s = parse_duration(probation_window)
        extension_s = parse_duration(probation_max_extension)
    except RolloutSpecError as exc:
        raise typer.BadParameter(str(exc)) from exc
    body: dict[str, Any] = {
        "selector": selector,
        "waves": waves,
        "soak": soak,
        "min_reporting": min_reporting,
        "report_timeout": report_timeout,
        "on_failure": on_failure,
        "require_observed": require_observed,
        "probation": {
            "window_s": window_s,
            "min_requests": probation_min_requests,
            "max_extension_s": extension_s,
            "max_drift_psi": probation_max_drift_psi,
        },
    }
    if capture_below_confidence is not None:  # on every device the rollout updates
        body["capture"] = capture_body(
            capture_below_confidence, capture_per_hour, capture_max_bytes, capture_for
        )
    if shadow is not None:
        body["shadow"] = {
            "devices": shadow,
            "duration": shadow_for,
            "min_samples": shadow_min_samples,
            "max_cpu_fraction": shadow_cpu,
            "min_agreement": min_agreement,
            "max_latency_ratio": max_shadow_latency_ratio,
            "max_distance": max_shadow_distance,
        }
    return body


@rollout_app.command()
def create(
    release: Annotated[str, typer.Argument(help="The release to roll out, NAME:VERSION.")],
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
    """Start rolling RELEASE out, canary first (or a shadow stage first, with --shadow)."""
    options = dict(locals())
    for key in ("release", "url", "token", "as_json"):
        options.pop(key)
    body = {"release": release, **policy_body(**options)}
    answer = run_client(url, token, lambda c: c.request("POST", "/api/v1/rollouts", json=body))
    if as_json:
        print_json(answer)
        return
    console.print(f"rollout [bold]{answer['id']}[/bold] of {answer['release']} created")
    _print_status(answer)


@rollout_app.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="Only rollouts in this status.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Rollouts, newest first."""
    params = {"status": status} if status else {}
    rows = run_client(url, token, lambda c: c.request("GET", "/api/v1/rollouts", params=params))
    if as_json:
        print_json(rows)
        return
    table = Table("id", "release", "last good", "selector", "status", "wave", "updated")
    for row in rows:
        table.add_row(
            row["id"],
            row["release"],
            row["last_good"] or "-",
            row["selector"] or "(all)",
            row["status"],
            str(row["wave"] + 1),
            row["updated_at"],
        )
    console.print(table)


@rollout_app.command()
def status(
    rollout_id: Annotated[str, typer.Argument(help="The rollout's id (ro-…).")],
    watch: Annotated[
        bool, typer.Option(help="Refresh every 2 s until the rollout completes or aborts.")
    ] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """A rollout's waves, device outcomes, gate values and recent events."""
    while True:
        answer = run_client(
            url, token, lambda c: c.request("GET", f"/api/v1/rollouts/{rollout_id}")
        )
        if as_json:
            print_json(answer)
        else:
            _print_status(answer)
        if not watch or answer["status"] in FINAL_STATUSES:
            return
        time.sleep(2.0)


def _steer(kind: str, help_text: str) -> None:
    def command(
        rollout_id: Annotated[str, typer.Argument(help="The rollout's id (ro-…).")],
        url: Url = DEFAULT_URL,
        token: Token = None,
        as_json: AsJson = False,
    ) -> None:
        answer = run_client(
            url, token, lambda c: c.request("POST", f"/api/v1/rollouts/{rollout_id}/{kind}")
        )
        if as_json:
            print_json(answer)
        else:
            console.print(f"{kind} queued for {rollout_id} (command {answer['command_id']})")

    command.__doc__ = help_text
    rollout_app.command(kind)(command)


_steer("pause", "Stop assigning devices; devices already updated keep the release.")
_steer("resume", "Go on after a pause; after failed gates this accepts the wave.")
_steer("abort", "Stop for good and order every updated device back to the last good release.")
_steer("promote", "Judge the current wave now, without waiting for the rest of its soak.")


def _print_status(answer: dict[str, Any]) -> None:
    console.print(
        f"[bold]{answer['id']}[/bold]  {answer['release']} (last good: "
        f"{answer['last_good'] or 'none'})  selector: {answer['selector'] or '(all)'}  "
        f"status: [bold]{answer['status']}[/bold]  wave {answer['wave'] + 1} of "
        f"{len(answer['waves'])}  matching devices: {answer['matching_devices']}"
    )
    stage = answer.get("shadow")
    if stage is not None:
        verdict = stage["judgement"]
        state = (
            "running"
            if stage["running"]
            else "passed"
            if verdict and verdict["passed"]
            else "stopped"
        )
        console.print(f"shadow stage on {len(stage['devices'])} devices: {state}")
        if verdict and verdict["gates"] and verdict["gates"] != answer["gates"]:
            _print_gates(verdict["gates"])  # a wave's gates came after them
    waves = Table("wave", "size", "target", "outcomes")
    for wave in answer["waves"]:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(wave["outcomes"].items())) or "-"
        waves.add_row(str(wave["wave"] + 1), wave["size"], str(wave["target"]), outcomes)
    console.print(waves)
    if answer["gates"]:
        _print_gates(answer["gates"])
    for note in answer["notes"]:
        console.print(f"  {note}")


def _print_gates(rows: list[dict[str, Any]]) -> None:
    gates = Table("gate", "value", "threshold", "passed", "note")
    for gate in rows:
        value = "-" if gate["value"] is None else f"{gate['value']:.4g}"
        threshold = "-" if gate["threshold"] is None else f"{gate['threshold']:.4g}"
        gates.add_row(
            gate["name"], value, threshold, "yes" if gate["passed"] else "NO", gate["note"]
        )
    console.print(gates)
