"""``edgefleet model …``: the operator's commands over HTTP.

``EDGEFLEET_URL`` and ``EDGEFLEET_TOKEN`` say where and as whom; ``--json`` prints the
API's answer for scripts instead of tables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from ..registry.schemas import VARIANT_MODES
from .common import DEFAULT_URL, AsJson, Token, Url, console, print_json, run_client
from .lineage_text import lineage_lines, lineage_tree_lines

__all__ = ["model_app"]

model_app = typer.Typer(help="Push, inspect, quantize and release models.", no_args_is_help=True)


def _parse_ref(ref: str) -> tuple[str, int | None]:
    name, _, version = ref.partition(":")
    if version and not version.isdigit():
        raise typer.BadParameter(f"{ref!r} is not NAME or NAME:VERSION")
    return name, int(version) if version else None


def _versions_table(rows: list[dict[str, Any]]) -> Table:
    table = Table("ver", "origin", "status", "format", "KiB", "parent", "sha256", "released")
    for row in rows:
        origin = row["origin"] + (f" {row['variant_mode']}" if row.get("variant_mode") else "")
        table.add_row(
            str(row["version"]),
            origin,
            row["status"],
            row["format"],
            f"{row['size_bytes'] / 1024:.1f}",
            str(row.get("parent_version") or "-"),
            row["sha256"][:12],
            "yes" if row.get("released") else "",
        )
    return table


def _print_version(row: dict[str, Any]) -> None:
    console.print(_versions_table([row]))
    for kind in ("inputs", "outputs"):
        for spec in row[kind]:
            console.print(f"{kind[:-1]:>6}: {spec['name']} {spec['datatype']} {spec['shape']}")
    report = row.get("report")
    if report:
        table = Table("metric", "value", title="evaluation against parent")
        for key, value in report.items():
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
        console.print(table)
    for reason in row.get("reasons", []):
        console.print(f"[red]rejected:[/red] {reason}")
    for note in row.get("notes", []):
        console.print(f"note: {note}")


@model_app.command("push")
def push(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help=".onnx or .tflite")],
    name: Annotated[str, typer.Option("--name", help="The model's name.")],
    validation: Annotated[
        Path | None, typer.Option("--validation", exists=True, dir_okay=False, help=".npz")
    ] = None,
    allow_signature_change: Annotated[
        bool, typer.Option("--allow-signature-change", help="Accept a new I/O signature.")
    ] = False,
    channel: Annotated[
        str | None,
        typer.Option("--channel", help="Run this channel's pipeline on the new version."),
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Upload a model (and its validation set) as the model's next version."""
    total = file.stat().st_size + (validation.stat().st_size if validation else 0)
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        disable=as_json,
    )
    with progress:
        task = progress.add_task(f"uploading {file.name}", total=total)
        row = run_client(
            url,
            token,
            lambda c: c.push(
                name,
                file,
                validation=validation,
                allow_signature_change=allow_signature_change,
                channel=channel,
                on_progress=lambda n: progress.advance(task, n),
            ),
        )
    if as_json:
        print_json(row)
        return
    console.print(f"registered {name}:{row['version']}")
    _print_version(row)


@model_app.command("list")
def list_(url: Url = DEFAULT_URL, token: Token = None, as_json: AsJson = False) -> None:
    """Every model and its latest version."""
    rows = run_client(url, token, lambda c: c.models())
    if as_json:
        print_json(rows)
        return
    table = Table("model", "versions", "latest", "created")
    for row in rows:
        table.add_row(
            row["name"], str(row["versions"]), str(row["latest_version"]), row["created_at"]
        )
    console.print(table)


@model_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="NAME or NAME:VERSION")],
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """A model's lineage: its versions as a tree (a variant under the version it was made
    from); or one version with its signature, report and where it came from."""
    name, version = _parse_ref(ref)
    if version is None:
        graph = run_client(url, token, lambda c: c.lineage(name))
        if as_json:
            print_json(graph)
        else:
            for line in lineage_tree_lines(graph):
                typer.echo(line)
        return
    row = run_client(url, token, lambda c: c.version(name, version))
    if as_json:
        print_json(row)
        return
    _print_version(row)
    _print_lineage(url, token, row)


def _print_lineage(url: str, token: str | None, row: dict[str, Any]) -> None:
    """The version's recorded lineage or, for a variant, the one it inherits."""
    lineage, inherited_from = row.get("lineage"), None
    if lineage is None and row["origin"] == "variant":
        name = row["model_name"]
        graph = run_client(url, token, lambda c: c.lineage(name))
        node = next((n for n in graph["nodes"] if n["version"] == row["version"]), None)
        root = node["lineage_version"] if node else row["version"]
        if root != row["version"]:
            lineage = run_client(url, token, lambda c: c.version(name, root)).get("lineage")
            inherited_from = f"{name}:{root}"
    for line in lineage_lines(lineage, inherited_from=inherited_from):
        typer.echo(line)


def _require_version(ref: str) -> tuple[str, int]:
    name, version = _parse_ref(ref)
    if version is None:
        raise typer.BadParameter(f"{ref!r} needs a version: NAME:VERSION")
    return name, version


NoWait = Annotated[
    bool,
    typer.Option(
        "--no-wait", help="Queue the job and print its id; follow it at GET /api/v1/jobs/ID."
    ),
]


def _run_job(
    url: str, token: str | None, body: dict[str, Any], doing: str, no_wait: bool, as_json: bool
) -> dict[str, Any] | None:
    """Queue a job and wait for its result (None with --no-wait, after printing the job)."""
    job = run_client(url, token, lambda c: c.queue_job(body))
    if no_wait:
        if as_json:
            print_json(job)
        else:
            console.print(f"job {job['id']} queued: GET /api/v1/jobs/{job['id']} follows it")
        return None
    with console.status(f"{doing}: job {job['id']} queued", spinner="dots") as status:

        def show(current: dict[str, Any]) -> None:
            status.update(f"{doing}: job {current['id']} {current['progress']}")

        return run_client(url, token, lambda c: c.wait_job(int(job["id"]), on_progress=show))


@model_app.command("quantize")
def quantize(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION of the parent")],
    mode: Annotated[str, typer.Option("--mode", help=" | ".join(VARIANT_MODES))],
    max_latency_ratio: Annotated[
        float | None,
        typer.Option(
            "--max-latency-ratio",
            help="reject the variant when slower than this times its parent "
            "(default: the controller's setting, 1.10)",
        ),
    ] = None,
    no_wait: NoWait = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Derive a variant; the quality gate accepts or rejects it (exit 1 when rejected).
    It runs as a job on the controller: this waits and shows its progress."""
    if mode not in VARIANT_MODES:
        raise typer.BadParameter(f"--mode must be one of {', '.join(VARIANT_MODES)}")
    name, version = _require_version(ref)
    body: dict[str, Any] = {"kind": "variant", "model": name, "version": version, "mode": mode}
    if max_latency_ratio is not None:
        body["max_latency_ratio"] = max_latency_ratio
    result = _run_job(url, token, body, f"quantizing {name}:{version} ({mode})", no_wait, as_json)
    if result is None:
        return
    row = run_client(url, token, lambda c: c.version(name, int(result["version"])))
    if as_json:
        print_json(row)
    else:
        console.print(f"variant {name}:{row['version']} is {row['status']}")
        _print_version(row)
    if row["status"] == "rejected":
        raise typer.Exit(1)


@model_app.command("release")
def release(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION to release")],
    output: Annotated[
        Path | None, typer.Option("--output", help="Also write the signed release here.")
    ] = None,
    no_wait: NoWait = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Sign a release of a version with the release key (a job on the controller: this
    waits and shows its progress)."""
    name, version = _require_version(ref)
    body = {"kind": "release", "model": name, "version": version}
    doing = f"profiling and signing {name}:{version}"
    if _run_job(url, token, body, doing, no_wait, as_json) is None:
        return
    answer = run_client(
        url, token, lambda c: c.request("GET", f"/api/v1/models/{name}/versions/{version}/release")
    )
    if output is not None:
        output.write_text(json.dumps(answer["envelope"], sort_keys=True))
    if as_json:
        print_json(answer)
        return
    console.print(f"released {name}:{version} (sha256 {answer['sha256']})")
    if output is not None:
        console.print(f"signed release written to {output}")
