"""``edgefleet samples …``: capture raw inputs on devices, list them, export a dataset.

``export`` pages through ``GET /api/v1/samples``, downloads each sample, checks it as the
controller did (``tensors.samples.read_sample``) and writes one ``.npz`` a training job
reads with ``numpy.load`` (``tensors.samples.dataset_of``: tensors as ``input:<name>`` and
``output:<name>``, stacked along axis 0, and per row ``sha256``, ``device_id``, ``model``,
``release_version``, ``captured_at``, ``reason``, ``confidence``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from apiclient import ControllerClient

from .common import DEFAULT_URL, AsJson, Token, Url, console, fail, print_json, run_client

__all__ = ["parse_bytes", "parse_since", "samples_app"]

samples_app = typer.Typer(
    help="Raw inputs devices capture for retraining (only where capture is turned on).",
    no_args_is_help=True,
)

PAGE = 1000
# What one download may be: well over the controller's largest sample.
MAX_DOWNLOAD_BYTES = 1024 * 1024 * 1024
_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3}
_UNITS |= {"KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


def parse_bytes(text: str) -> int:
    """Bytes in ``"50MB"``, ``"512KiB"``, ``"1GB"`` or a bare ``"1000"``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise typer.BadParameter(f"{text!r} is not a size like 50MB or 512KiB")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """A time: a duration back from now (``"1d"``, ``"6h"``) or an ISO 8601 timestamp."""
    from ..rollouts.core import RolloutSpecError, parse_duration

    try:
        return (now or datetime.now(UTC)) - timedelta(seconds=parse_duration(text))
    except RolloutSpecError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is neither a duration (1d) nor a time") from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _list(client: ControllerClient, params: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        page = client.request("GET", "/api/v1/samples", params={**params, "offset": len(found)})
        found += page
        if len(page) < params["limit"]:
            return found


def _params(model: str | None, device: str | None, since: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": PAGE}
    if model:
        params["model"] = model
    if device:
        params["device"] = device
    if since:
        params["since"] = parse_since(since).isoformat()
    return params


@samples_app.command("list")
def list_(
    model: Annotated[str | None, typer.Option(help="Only this model's samples.")] = None,
    device: Annotated[str | None, typer.Option(help="Only this device's samples.")] = None,
    since: Annotated[str | None, typer.Option(help="Captured since: 1d, 6h or a time.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Captured samples, oldest first."""
    params = _params(model, device, since)
    samples = run_client(url, token, lambda c: _list(c, params))
    if as_json:
        print_json(samples)
        return
    table = Table("sha256", "model", "release", "device", "captured", "reason", "confidence")
    for s in samples:
        confidence = s["confidence"]
        table.add_row(
            s["sha256"][:16],
            s["model"],
            str(s["release_version"] or "-"),
            s["device_id"],
            s["captured_at"],
            s["reason"],
            "-" if confidence is None else f"{confidence:.3f}",
        )
    console.print(table)
    console.print(f"{len(samples)} samples")


@samples_app.command("export")
def export(
    out: Annotated[Path, typer.Argument(help="The .npz to write.")],
    model: Annotated[str, typer.Option(help="The model whose samples to export.")],
    since: Annotated[str | None, typer.Option(help="Captured since: 1d, 6h or a time.")] = None,
    device: Annotated[str | None, typer.Option(help="Only this device's samples.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Write MODEL's samples as one dataset for numpy.load (see ``docs/operations.md``)."""
    from tensors.samples import Sample, SampleFormatError, dataset_of, read_sample

    params = _params(model, device, since)

    def fetch(client: ControllerClient) -> list[tuple[str, Sample]]:
        samples = []
        for listed in _list(client, params):
            data = client.download(listed["url"], max_bytes=MAX_DOWNLOAD_BYTES)
            try:  # read as it comes: the bytes of one sample at a time in memory
                samples.append((listed["sha256"], read_sample(data, max_bytes=len(data))))
            except SampleFormatError as exc:
                raise fail(f"sample {listed['sha256']} does not read: {exc}") from exc
        return samples

    dataset = dataset_of(run_client(url, token, fetch))
    if dataset.samples == 0:
        raise fail(f"no samples of {model} to export")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as handle:
        np.savez(handle, **dataset.arrays)  # type: ignore[arg-type]
    skipped = f", {dataset.skipped} left out (another shape)" if dataset.skipped else ""
    console.print(f"wrote {out}: {dataset.samples} samples, {dataset.rows} rows{skipped}")


@samples_app.command("delete")
def delete(
    model: Annotated[str, typer.Option(help="The model whose samples to delete.")],
    before: Annotated[
        str | None, typer.Option(help="Only those captured before: 30d, or a time.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="Only this device's samples.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Delete MODEL's samples on the controller (frees the devices' quota there)."""
    params: dict[str, Any] = {"model": model}
    if before:
        params["before"] = parse_since(before).isoformat()
    if device:
        params["device"] = device
    answer = run_client(url, token, lambda c: c.request("DELETE", "/api/v1/samples", params=params))
    console.print(f"deleted {answer['deleted']} samples of {model}")


@samples_app.command("capture")
def capture(
    model: Annotated[str, typer.Option(help="The model whose inputs devices keep.")],
    selector: Annotated[
        str, typer.Option(help="Devices (label selector; empty: all that run the model).")
    ] = "",
    below_confidence: Annotated[
        float, typer.Option(help="Keep inputs whose top-1 confidence is below this.")
    ] = 0.5,
    rare_input_share: Annotated[
        float | None,
        typer.Option(
            help="Also keep inputs with at least this share of values where the release's "
            "reference data rarely was (input drift)."
        ),
    ] = None,
    per_hour: Annotated[int, typer.Option(help="At most this many per device and hour.")] = 20,
    max_bytes: Annotated[
        str, typer.Option(help="At most this much waiting on each device, e.g. 50MB.")
    ] = "50MB",
    for_: Annotated[str, typer.Option("--for", help="How long, e.g. 1d, 6h.")] = "1d",
    off: Annotated[bool, typer.Option("--off", help="Turn capture off instead.")] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Turn capture of MODEL's low-confidence inputs on (or --off) on devices."""
    from ..rollouts.core import RolloutSpecError, parse_duration

    try:
        for_s = parse_duration(for_)
    except RolloutSpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="--for") from exc
    body = {
        "model": model,
        "selector": selector,
        "below_confidence": below_confidence,
        "rare_input_share": rare_input_share,
        "per_hour": per_hour,
        "max_bytes": parse_bytes(max_bytes),
        "for_s": for_s,
        "off": off,
    }
    answer = run_client(url, token, lambda c: c.request("POST", "/api/v1/capture", json=body))
    if as_json:
        print_json(answer)
        return
    devices = ", ".join(answer["devices"])
    if off:
        console.print(f"capture of {model} off on {len(answer['devices'])} devices: {devices}")
    else:
        console.print(
            f"capture of {model} on until {answer['until']} on "
            f"{len(answer['devices'])} devices: {devices}"
        )


@samples_app.command("status")
def status(
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Where capture is on now."""
    params = {"model": model} if model else {}
    active = run_client(url, token, lambda c: c.request("GET", "/api/v1/capture", params=params))
    if as_json:
        print_json(active)
        return
    table = Table("model", "device", "until", "below", "per hour", "max bytes", "by")
    for a in active:
        table.add_row(
            a["model"],
            a["device_id"],
            a["until"],
            f"{a['below_confidence']:g}",
            str(a["per_hour"]),
            str(a["max_bytes"]),
            a["source"],
        )
    console.print(table if active else "capture is off everywhere")


# The capture options of commands that turn capture on (alert rules, rollouts).
CaptureBelowConfidence = Annotated[
    float | None,
    typer.Option(help="Capture inputs whose top-1 confidence is below this, for retraining."),
]
CapturePerHour = Annotated[int, typer.Option(help="Captured per device and hour.")]
CaptureMaxBytes = Annotated[str, typer.Option(help="Captured waiting on each device, e.g. 50MB.")]
CaptureFor = Annotated[str, typer.Option(help="How long capture stays on.")]


def capture_body(
    below_confidence: float, per_hour: int, max_bytes: str, for_: str
) -> dict[str, Any]:
    """The API's ``capture`` block from the capture options."""
    from ..rollouts.core import RolloutSpecError, parse_duration

    try:
        for_s = parse_duration(for_)
    except RolloutSpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="--capture-for") from exc
    return {
        "below_confidence": below_confidence,
        "per_hour": per_hour,
        "max_bytes": parse_bytes(max_bytes),
        "for_s": for_s,
    }
