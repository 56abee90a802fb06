"""``python -m simulator sim|demo`` (also ``edgefleet sim`` and ``edgefleet demo``).

Commands are thin: they read options and call a function that returns an exit code.
Logging is configured here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from apiclient import AsyncControllerClient

from .demo import print_summary, run_demo
from .report import write_report
from .run import run_scenario
from .scenario import Scenario, ScenarioError, load_scenario

__all__ = ["app", "main"]

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
RELEASE_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*:[1-9][0-9]*")

app = typer.Typer(no_args_is_help=True, add_completion=False, help="edgefleet fleet simulator")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Thousands of agents log every step, and every injected fault is a warning or an
    # error somewhere: by default only the simulator's own lines and agents' errors.
    if not verbose:
        logging.getLogger("simulator").setLevel(logging.INFO)
        logging.getLogger("agent").setLevel(logging.ERROR)
        logging.getLogger("mqtt").setLevel(logging.CRITICAL)  # paho, on cut connections


@app.command()
def sim(
    scenario: Annotated[Path, typer.Option("--scenario", help="Scenario file (TOML).")],
    report: Annotated[
        Path, typer.Option("--report", help="Directory for summary.json and report.html.")
    ],
    url: Annotated[str, typer.Option("--url", envvar="EDGEFLEET_URL", help="Controller URL.")],
    token: Annotated[
        str,
        typer.Option(
            "--token", envvar="EDGEFLEET_TOKEN", help="Operator token.", show_default=False
        ),
    ],
    devices: Annotated[
        int | None, typer.Option("--devices", help="Fleet size (overrides the file).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same fleet and faults.")] = 1,
    release: Annotated[
        list[str] | None,
        typer.Option("--release", help="NAME=MODEL:VERSION for a scenario's '@NAME' release."),
    ] = None,
    work_dir: Annotated[
        Path | None, typer.Option("--work-dir", help="Device state (default: REPORT/devices).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a scenario's simulated fleet against a running controller."""
    _configure_logging(verbose)
    try:
        parsed = load_scenario(scenario, devices=devices)
    except ScenarioError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from exc
    releases = {}
    for item in release or []:
        name, _, ref = item.partition("=")
        if not name or not RELEASE_REF.fullmatch(ref):
            typer.echo(f"error: --release must be NAME=MODEL:VERSION, not {item!r}", err=True)
            raise typer.Exit(EXIT_USAGE)
        releases[name] = ref
    raise typer.Exit(
        asyncio.run(_sim(parsed, url, token, seed, releases, report, work_dir or report / "fleet"))
    )


async def _sim(
    parsed: Scenario,
    url: str,
    token: str,
    seed: int,
    releases: dict[str, str],
    report: Path,
    work_dir: Path,
) -> int:
    api = AsyncControllerClient(url, token)
    try:
        result = await run_scenario(
            parsed, seed=seed, api=api, work_dir=work_dir, releases=releases
        )
    finally:
        await api.close()
    summary = write_report(result, report)
    print_summary(summary)
    print(f"\nreport: {report / 'report.html'}")
    return EXIT_OK if result.ok else EXIT_UNEXPECTED


@app.command()
def demo(
    state_dir: Annotated[
        Path,
        typer.Option("--state-dir", help="Wiped at the start; holds everything the demo makes."),
    ] = Path("edgefleet-demo"),
    serve: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Keep the dashboard up until Ctrl-C.")
    ] = True,
    devices: Annotated[int | None, typer.Option("--devices", help="Simulated devices.")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 7,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """The whole system on this machine: controller, broker, 50 devices, two rollouts."""
    _configure_logging(verbose)
    raise typer.Exit(
        run_demo(state_dir=state_dir.resolve(), serve=serve, devices=devices, seed=seed)
    )


def main() -> None:
    sys.exit(app())
