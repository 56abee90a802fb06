"""`edgefleet demo`: the whole system on this machine, from nothing, in a few minutes.

Phases: start a controller (its embedded MQTT broker, SQLite) as a subprocess in a fresh
state directory on free ports; prepare the sample digits model, quantize it (INT8) and
release the variant; prepare a degraded model and a second model (``digits-lite``) and
release them; run the demo scenario (50 simulated devices: the good release canary ->
100 %; then, at the same time, the second model's first release, which every device runs
beside the first, and the degraded digits release, which the canary rolls back and whose
rollout aborts alone); print a summary table and write the report;
then keep the controller and its dashboard up until Ctrl-C (unless ``serve`` is off).

The state directory is wiped at the start, so every run starts clean, and kept at the end
so the report, the logs and the database can be read afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apiclient import AsyncControllerClient

from .controller_process import ControllerProcess, port_or_free
from .demo_models import DemoModels
from .report import write_report
from .run import RunResult, run_scenario
from .scenario import load_scenario

__all__ = ["DEMO_SCENARIO", "prepare_demo_releases", "run_demo"]

DEMO_SCENARIO = Path(__file__).parent / "scenarios" / "demo.toml"
DEFAULT_HTTP_PORT = 8080
DEFAULT_MQTT_PORT = 1883
MODEL = "digits"
SECOND_MODEL = "digits-lite"


def run_demo(*, state_dir: Path, serve: bool, devices: int | None = None, seed: int = 7) -> int:
    """Run the demo; 0 when every expected outcome was met, 1 otherwise."""
    started = time.monotonic()
    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    controller = ControllerProcess(
        state_dir, port_or_free(DEFAULT_HTTP_PORT), port_or_free(DEFAULT_MQTT_PORT)
    )
    print(f"edgefleet demo: state in {state_dir}")
    print(
        f"starting the controller on {controller.url} "
        f"(embedded MQTT broker on 127.0.0.1:{controller.mqtt_port}, SQLite)"
    )
    controller.start()
    try:
        token = controller.create_token("operator")
        viewer = controller.create_token("viewer")
        result = asyncio.run(_demo(controller, token, state_dir, devices, seed))
        summary = write_report(result, state_dir / "report")
        print_summary(summary)
        print(f"\nreport: {state_dir / 'report' / 'report.html'}")
        print(f"demo finished in {time.monotonic() - started:.0f} s")
        if serve:
            print(f"\ndashboard: {controller.url}/ui")
            print(f"  log in with the operator token {token}")
            print(f"  or the viewer token {viewer}")
            print("Ctrl-C stops the controller.")
            with contextlib.suppress(KeyboardInterrupt):
                while controller.process is not None and controller.process.poll() is None:
                    time.sleep(1)
    finally:
        controller.stop()
    return 0 if result.ok else 1


async def _demo(
    controller: ControllerProcess, token: str, state_dir: Path, devices: int | None, seed: int
) -> RunResult:
    api = AsyncControllerClient(controller.url, token)
    try:
        releases = await prepare_demo_releases(api, state_dir / "models")
        scenario = load_scenario(DEMO_SCENARIO, devices=devices)
        print(f"rolling out to {scenario.fleet.devices} simulated devices")
        return await run_scenario(
            scenario,
            seed=seed,
            api=api,
            work_dir=state_dir / "fleet",
            releases=releases,
            run_tag="demo",
        )
    finally:
        await api.close()


async def prepare_demo_releases(api: AsyncControllerClient, directory: Path) -> dict[str, str]:
    """Train, push, quantize and release the good model; push and release the degraded
    one and the second model. Returns ``{"good": "digits:N", "bad": "digits:M",
    "second": "digits-lite:K"}``."""
    print("training the sample digits model (scikit-learn digits, MLP -> ONNX)")
    models = await build_demo_models_apart(directory)
    print(f"  test accuracy {models.test_accuracy:.3f}")
    pushed = await api.push(MODEL, models.good, models.validation)
    print(f"pushed {MODEL}:{pushed['version']}; quantizing it (INT8, dynamic)")
    variant = await api.variant(MODEL, int(pushed["version"]), "int8-dynamic")
    print(f"  {MODEL}:{variant['version']}: {_gate_text(variant, pushed)}")
    accepted = variant["status"] == "accepted"
    good = await api.release(MODEL, int(variant["version"] if accepted else pushed["version"]))
    degraded = await api.push(MODEL, models.degraded, models.validation)
    bad = await api.release(MODEL, int(degraded["version"]))
    print(f"released {good} (good) and {bad} (degraded: its confidence collapses)")
    lite = await api.push(SECOND_MODEL, models.lite, models.validation)
    second = await api.release(SECOND_MODEL, int(lite["version"]))
    print(f"released {second}, a second model (accuracy {models.lite_accuracy:.3f})")
    return {"good": good, "bad": bad, "second": second}


async def build_demo_models_apart(directory: Path) -> DemoModels:
    """``build_demo_models`` in a child process: scikit-learn, SciPy and skl2onnx (some
    200 MiB) stay out of the process that then runs the simulated fleet."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _BUILD_DEMO_MODELS,
        str(directory),
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"building the demo models failed (exit {child.returncode})")
    built = json.loads(output.decode().splitlines()[-1])
    return DemoModels(
        good=Path(built["good"]),
        degraded=Path(built["degraded"]),
        validation=Path(built["validation"]),
        test_accuracy=float(built["test_accuracy"]),
        degraded_accuracy=float(built["degraded_accuracy"]),
        lite=Path(built["lite"]),
        lite_accuracy=float(built["lite_accuracy"]),
    )


_BUILD_DEMO_MODELS = """
import dataclasses, json, sys
from pathlib import Path
from simulator.demo_models import build_demo_models
models = build_demo_models(Path(sys.argv[1]))
print(json.dumps(dataclasses.asdict(models), default=str))
"""


def _gate_text(variant: dict[str, Any], parent: dict[str, Any]) -> str:
    ratio = int(variant["size_bytes"]) / max(1, int(parent["size_bytes"]))
    reasons = "; ".join(variant.get("reasons") or [])
    return f"{variant['status']} by the quality gate, {ratio:.2f}x the size" + (
        f" ({reasons})" if reasons else ""
    )


def print_summary(summary: dict[str, Any]) -> None:
    """The summary table: one row per rollout, then the fleet's final releases."""
    rows = [("rollout", "release", "status", "took", "committed", "rolled back", "failed")]
    for rollout in summary["rollouts"]:
        outcomes = rollout["device_outcomes"]
        rows.append(
            (
                str(rollout["index"] + 1),
                rollout["release"],
                str(rollout["status"]),
                f"{rollout['duration_s']:.0f} s",
                str(outcomes["committed"]),
                str(outcomes["rolled_back"]),
                str(outcomes["failed"]),
            )
        )
    print()
    _print_table(rows)
    print()
    _print_table(
        [("final release", "devices")]
        + [(k, str(v)) for k, v in sorted(summary["final_releases"].items())]
    )
    for rollout in summary["rollouts"]:
        failed = [g for g in rollout.get("gates") or [] if not g.get("passed")]
        if failed:
            names = ", ".join(f"{g['name']} {g['value']} > {g['threshold']}" for g in failed)
            print(f"rollout {rollout['index'] + 1} failed gates: {names}")
    if summary["expectations_met"]:
        print("every expected outcome was met")
    else:
        print("NOT as expected: " + "; ".join(summary["expectation_failures"]))


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for number, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if number == 0:
            print("  ".join("-" * width for width in widths))
