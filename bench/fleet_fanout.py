"""Fan-out: how long a release takes to reach 1,000 simulated devices, next to a bound.

Run from the repository root: ``.venv/bin/python bench/fleet_fanout.py [--devices 1000]``.

Setup, all on this machine: a Mosquitto of its own on a free port (anonymous), a
controller subprocess on SQLite using it, the demo's digits model quantized and released,
and ``--devices`` simulated agents in this process (``simulator.run``; device state on
tmpfs when /dev/shm exists). The rollout is one wave of 100 % with a 1 s probation window
and no request minimum, so what is measured is distribution: the controller planning and
signing every deployment, Mosquitto delivering them, every agent verifying its deployment
and release, downloading and hashing the artifact, staging, activating and committing.

Measured: from the rollout's creation to the last device's ``committed`` event (as the
agents queued them), and the same to the controller seeing the rollout completed.

The lower bound, measured in the same run on the same machine, is what the two
unavoidable transfers cost with nothing else happening: (a) the artifact downloaded once
per device from the controller over loopback (32 concurrent httpx streams), and (b) one
retained QoS 1 message per device of a real signed deployment's size published to the
same Mosquitto by paho, waiting for every PUBACK. bound = a + b.
Targets (issue 7): fan-out <= 60 s on 2 cores, and within 3x the bound.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apiclient import AsyncControllerClient
from simulator.controller_process import ControllerProcess, port_or_free
from simulator.demo import prepare_demo_releases
from simulator.run import RunResult, run_scenario
from simulator.scenario import RolloutSpec, Scenario
from tests.brokers import MosquittoServer, find_mosquitto

DOWNLOAD_CONCURRENCY = 32


def raise_file_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def one_wave_scenario(
    name: str,
    devices: int,
    *,
    outbox: str = "sqlite",
    stats_window_s: float = 2.0,
    requests_per_s: float = 0.5,
    start_concurrency: int = 200,
    observe_after_s: float = 0.0,
) -> Scenario:
    """One 100 % wave of the good release, 1 s probation, no request minimum."""
    return Scenario.model_validate(
        {
            "name": name,
            "fleet": {
                "devices": devices,
                "labels": {"fleet": "bench"},
                "stats_window_s": stats_window_s,
                "start_concurrency": start_concurrency,
                "outbox": outbox,
            },
            "workload": {"requests_per_s": requests_per_s},
            "rollouts": [
                RolloutSpec(
                    release="@good",
                    waves="100%",
                    soak="0s",
                    report_timeout="10m",
                    gates={"min_health_requests": 0},
                    probation={"window_s": 1.0, "min_requests": 0, "max_extension_s": 0.0},
                    timeout_s=1200,
                    observe_after_s=observe_after_s,
                ).model_dump()
            ],
        }
    )


def work_dir_root() -> Path:
    shm = Path("/dev/shm")  # noqa: S108 - a private mkdtemp below it
    return Path(tempfile.mkdtemp(prefix="edgefleet-bench-", dir=shm if shm.is_dir() else None))


async def download_bound_s(url: str, token: str, sha256: str, count: int) -> float:
    gate = asyncio.Semaphore(DOWNLOAD_CONCURRENCY)
    limits = httpx.Limits(max_connections=DOWNLOAD_CONCURRENCY)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, limits=limits, timeout=60
    ) as client:

        async def one() -> int:
            async with gate:
                response = await client.get(f"/artifacts/sha256/{sha256}")
                response.raise_for_status()
                return len(response.content)

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return time.perf_counter() - started


def publish_bound_s(port: int, payload_bytes: int, count: int) -> float:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bound")
    client.connect("127.0.0.1", port)
    client.loop_start()
    payload = os.urandom(payload_bytes)
    started = time.perf_counter()
    infos = [
        client.publish(f"bench/bound/{i}/desired", payload, qos=1, retain=True)
        for i in range(count)
    ]
    for info in infos:
        info.wait_for_publish(timeout=60)
    elapsed = time.perf_counter() - started
    for i in range(count):  # clear the retained messages again
        client.publish(f"bench/bound/{i}/desired", b"", qos=1, retain=True)
    client.disconnect()
    client.loop_stop()
    return elapsed


def retained_bytes(port: int, topic: str) -> int:
    """The size of the retained message on ``topic`` (a real signed deployment)."""
    received: list[int] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-size")
    client.on_message = lambda _c, _u, message: received.append(len(message.payload))
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        time.sleep(0.05)
    client.disconnect()
    client.loop_stop()
    if not received:
        raise RuntimeError(f"no retained message on {topic}")
    return received[0]


def fanout_times(result: RunResult) -> tuple[float, float, int]:
    """(to the last agent's committed, to the controller's completed, committed count)."""
    timeline = result.recorder.rollouts[0]
    finals = result.recorder.final_events(timeline.release)
    committed = [event.t_s for event in finals.values() if event.type == "committed"]
    completed = next(
        (s["t_s"] for s in timeline.samples if s["status"] == "completed"), float("nan")
    )
    last = max(committed) if committed else float("nan")
    return last - timeline.started_s, completed - timeline.started_s, len(committed)


async def run(args: argparse.Namespace, state: Path) -> None:
    mosquitto = MosquittoServer(
        find_mosquitto() or "mosquitto",
        state,
        extra_config="allow_anonymous true\nmax_queued_messages 0\n",
    )
    mosquitto.start()
    broker_url = f"mqtt://127.0.0.1:{mosquitto.port}"
    controller = ControllerProcess(state, port_or_free(0), 0, broker=broker_url)
    controller.start()
    try:
        token = controller.create_token("operator")
        api = AsyncControllerClient(controller.url, token)
        releases = await prepare_demo_releases(api, state / "models")
        model, _, version = releases["good"].partition(":")
        release = await api.request("GET", f"/api/v1/models/{model}/versions/{version}")
        work_dir = work_dir_root()
        try:
            result = await run_scenario(
                one_wave_scenario(f"fanout-{args.devices}", args.devices),
                seed=args.seed,
                api=api,
                work_dir=work_dir,
                releases=releases,
            )
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        agents_s, controller_s, committed = fanout_times(result)
        await api.close()
        deployment_bytes = await asyncio.to_thread(
            retained_bytes, mosquitto.port, f"edgefleet/v1/{result.devices[0].device_id}/desired"
        )
        download_s = await download_bound_s(controller.url, token, release["sha256"], args.devices)
        publish_s = await asyncio.to_thread(
            publish_bound_s, mosquitto.port, deployment_bytes, args.devices
        )
    finally:
        controller.stop()
        mosquitto.stop()
    bound_s = download_s + publish_s
    print()
    print(f"fan-out of {release['size_bytes']} bytes to {args.devices} simulated devices on")
    print(
        f"Mosquitto ({platform.machine()}, {os.cpu_count()} cores); deployment {deployment_bytes} B"
    )
    print()
    print("| measure | seconds | vs bound |")
    print("| --- | --- | --- |")
    print(f"| artifact x {args.devices} over loopback (a) | {download_s:.2f} | |")
    print(f"| {args.devices} retained deployments published (b) | {publish_s:.2f} | |")
    print(f"| lower bound a + b | {bound_s:.2f} | 1.00x |")
    print(f"| rollout start -> last agent committed | {agents_s:.2f} | {agents_s / bound_s:.2f}x |")
    print(
        f"| rollout start -> controller saw it completed | {controller_s:.2f} "
        f"| {controller_s / bound_s:.2f}x |"
    )
    print()
    print(
        f"committed: {committed} of {args.devices}; setup (enroll + connect) {result.setup_s:.1f} s"
    )
    print(f"shortcuts: {'; '.join(result.shortcuts.names())}")
    target = agents_s <= 60 and agents_s <= 3 * bound_s
    print(f"target (<= 60 s and <= 3x the bound): {'met' if target else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--state-dir", type=Path, help="keep the controller's and broker's files here"
    )
    parser.add_argument("--verbose", action="store_true", help="log agents' warnings too")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("simulator").setLevel(logging.INFO)
    if not args.verbose:
        logging.getLogger("agent").setLevel(logging.ERROR)
        logging.getLogger("mqtt").setLevel(logging.CRITICAL)
    raise_file_limit()
    if args.state_dir:
        args.state_dir.mkdir(parents=True, exist_ok=True)
        asyncio.run(run(args, args.state_dir))
        return
    with tempfile.TemporaryDirectory(prefix="edgefleet-fanout-") as directory:
        asyncio.run(run(args, Path(directory)))


if __name__ == "__main__":
    main()
