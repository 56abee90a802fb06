"""Fan-out: how long a release takes to reach 1,000 simulated devices, next to a bound.

Run from the repository root:
``.venv/bin/python bench/fleet_fanout.py [--devices 1000] [--source mirror|controller]``.

Setup, all on this machine: a Mosquitto of its own on a free port (anonymous), a
controller subprocess on SQLite using it, the demo's digits model quantized and released,
and ``--devices`` simulated agents in this process (``simulator.run``; device state on
tmpfs when /dev/shm exists). The rollout is one wave of 100 % with a 1 s probation window
and no request minimum, so what is measured is distribution: the controller planning and
signing every deployment, Mosquitto delivering them, every agent verifying its deployment
and release, downloading and hashing the artifact, staging, activating and committing.

With ``--source mirror`` (the default) the artifacts come from an artifact mirror: Debian's
nginx on a free loopback port serving what ``edgefleet artifacts export`` wrote, named in
the controller's ``EDGEFLEET_ARTIFACT_MIRRORS``; ``--source controller`` downloads them
from the controller's Python process as before mirrors existed.

Measured: from the rollout's creation to the last device's ``committed`` event (as the
agents queued them), and the same to the controller seeing the rollout completed; and
from the last ``committed`` to the controller's own ``rollout_completed`` event (its
timestamp, on the same clock: no polling interval in it).

The lower bound, measured in the same run on the same machine, is what the two
unavoidable transfers cost with nothing else happening: (a) the model and its check bundle
downloaded once per device from the same source the devices used (controller or nginx)
over loopback (32 concurrent httpx streams; before mirrors the bound counted the model
only, though every device downloads both), and (b) one retained QoS 1 message per
device of a real signed deployment's size published to the same Mosquitto by paho,
waiting for every PUBACK.
bound = a + b.
Targets: issue 7, fan-out <= 60 s on 2 cores and within 3x the bound; issue 19 (mirror),
within 2x the bound, and the controller sees completion within 2 s of the last commit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apiclient import AsyncControllerClient
from protocol import Envelope
from simulator.controller_process import ControllerProcess, port_or_free
from simulator.demo import prepare_demo_releases
from simulator.run import RunResult, run_scenario
from simulator.scenario import RolloutSpec, Scenario
from tests.brokers import MosquittoServer, NginxServer, find_mosquitto, find_nginx

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


async def download_bound_s(base_url: str, token: str, digests: list[str], count: int) -> float:
    """``count`` times each of ``{base_url}/sha256/<hex>`` for ``digests``, 32 at a time."""
    gate = asyncio.Semaphore(DOWNLOAD_CONCURRENCY)
    limits = httpx.Limits(max_connections=DOWNLOAD_CONCURRENCY)
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, limits=limits, timeout=60
    ) as client:

        async def one(sha256: str) -> int:
            async with gate:
                response = await client.get(f"/sha256/{sha256}")
                response.raise_for_status()
                return len(response.content)

        started = time.perf_counter()
        await asyncio.gather(*(one(sha256) for _ in range(count) for sha256 in digests))
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


def fanout_times(result: RunResult, wall_offset_s: float) -> tuple[float, float, float, int]:
    """(to the last agent's committed, to the controller's completed as polled, from the
    last committed to the controller's rollout_completed event, committed count).

    ``wall_offset_s`` is ``time.time() - time.monotonic()``: the recorder keeps monotonic
    times, the controller stamps its events with the wall clock of the same machine.
    """
    timeline = result.recorder.rollouts[0]
    finals = result.recorder.final_events(timeline.release)
    committed = [event.t_s for event in finals.values() if event.type == "committed"]
    completed = next(
        (s["t_s"] for s in timeline.samples if s["status"] == "completed"), float("nan")
    )
    last = max(committed) if committed else float("nan")
    events = (timeline.final or {}).get("events", [])
    completed_at = next(
        (datetime.fromisoformat(e["at"]) for e in events if e["kind"] == "rollout_completed"),
        None,
    )
    last_commit_wall_s = result.recorder.started + last + wall_offset_s
    seen_after_s = (
        float("nan") if completed_at is None else completed_at.timestamp() - last_commit_wall_s
    )
    return (
        last - timeline.started_s,
        completed - timeline.started_s,
        seen_after_s,
        len(committed),
    )


async def controller_artifact_answers(url: str, token: str) -> int:
    """How many requests the controller's artifact route answered (its /metrics)."""
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as client:
        response = await client.get(f"{url}/metrics", timeout=30)
        response.raise_for_status()
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in response.text.splitlines()
        if line.startswith("edgefleet_http_requests_total{")
        and 'route="/artifacts/sha256/{digest}"' in line
    )


def export_to_mirror(controller: ControllerProcess, directory: Path) -> str:
    """``edgefleet artifacts export`` on the controller's data directory."""
    result = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "controller", "artifacts", "export", str(directory)],
        env=controller.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return result.stdout.strip()


async def run(args: argparse.Namespace, state: Path) -> None:
    mosquitto = MosquittoServer(
        find_mosquitto() or "mosquitto",
        state,
        extra_config="allow_anonymous true\nmax_queued_messages 0\n",
    )
    load_at_start = os.getloadavg()[0]
    mosquitto.start()
    nginx: NginxServer | None = None
    settings: dict[str, str] = {}
    if args.source == "mirror":
        nginx = NginxServer(find_nginx() or "nginx", state / "mirror", state / "nginx")
        nginx.start()
        settings["EDGEFLEET_ARTIFACT_MIRRORS"] = nginx.url
    broker_url = f"mqtt://127.0.0.1:{mosquitto.port}"
    controller = ControllerProcess(state, port_or_free(0), 0, broker=broker_url, settings=settings)
    try:
        controller.start()
    except BaseException:
        # Leave no broker or nginx behind when the controller does not start.
        mosquitto.stop()
        if nginx is not None:
            nginx.stop()
        raise
    try:
        token = controller.create_token("operator")
        api = AsyncControllerClient(controller.url, token)
        releases = await prepare_demo_releases(api, state / "models")
        model, _, version = releases["good"].partition(":")
        release = await api.request("GET", f"/api/v1/models/{model}/versions/{version}")
        signed = await api.request("GET", f"/api/v1/models/{model}/versions/{version}/release")
        bundle = json.loads(Envelope.from_json_obj(signed["envelope"]).payload)["check_bundle"]
        if nginx is not None:
            print(await asyncio.to_thread(export_to_mirror, controller, nginx.root))
        wall_offset_s = time.time() - time.monotonic()
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
        agents_s, controller_s, seen_after_s, committed = fanout_times(result, wall_offset_s)
        from_controller = await controller_artifact_answers(controller.url, token)
        rejections = Counter(
            event.reason
            for events in result.recorder.events.values()
            for event in events
            if event.type == "mirror_rejected"
        )
        await api.close()
        deployment_bytes = await asyncio.to_thread(
            retained_bytes, mosquitto.port, f"edgefleet/v1/{result.devices[0].device_id}/desired"
        )
        source_url = nginx.url if nginx is not None else f"{controller.url}/artifacts"
        digests = [release["sha256"], bundle["sha256"]]
        download_s = await download_bound_s(source_url, token, digests, args.devices)
        publish_s = await asyncio.to_thread(
            publish_bound_s, mosquitto.port, deployment_bytes, args.devices
        )
        mirror_served = len(nginx.served()) if nginx is not None else 0
    finally:
        controller.stop()
        mosquitto.stop()
        if nginx is not None:
            nginx.stop()
    bound_s = download_s + publish_s
    print()
    source = "an nginx mirror" if nginx is not None else "the controller"
    print(
        f"fan-out of {release['size_bytes']} + {bundle['length']} bytes (model, check bundle) "
        f"from {source} to {args.devices} simulated devices on"
    )
    print(
        f"Mosquitto ({platform.machine()}, {os.cpu_count()} cores); deployment {deployment_bytes} B"
    )
    print()
    print("| measure | seconds | vs bound |")
    print("| --- | --- | --- |")
    print(
        f"| model + check bundle x {args.devices} from {source} over loopback (a) "
        f"| {download_s:.2f} | |"
    )
    print(f"| {args.devices} retained deployments published (b) | {publish_s:.2f} | |")
    print(f"| lower bound a + b | {bound_s:.2f} | 1.00x |")
    print(f"| rollout start -> last agent committed | {agents_s:.2f} | {agents_s / bound_s:.2f}x |")
    print(
        f"| rollout start -> controller saw it completed | {controller_s:.2f} "
        f"| {controller_s / bound_s:.2f}x |"
    )
    print(f"| last agent committed -> controller's rollout_completed | {seen_after_s:.2f} | |")
    print()
    print(
        f"committed: {committed} of {args.devices}; setup (enroll + connect) {result.setup_s:.1f} s"
    )
    if nginx is not None:
        print(f"requests nginx answered (devices and bound): {mirror_served}")
    print(f"artifact requests the controller answered during the rollout: {from_controller}")
    if nginx is not None:
        print(f"mirror rejections reported by devices: {dict(rejections) or 'none'}")
    print(f"shortcuts: {'; '.join(result.shortcuts.names())}")
    print(
        f"machine load (1-min average, {os.cpu_count()} cores): {load_at_start:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    target = agents_s <= 60 and agents_s <= 3 * bound_s
    print(f"target (<= 60 s and <= 3x the bound): {'met' if target else 'NOT met'}")
    if nginx is not None:
        mirror_target = agents_s <= 2 * bound_s
        print(f"target with a mirror (<= 2x the bound): {'met' if mirror_target else 'NOT met'}")
    seen = seen_after_s <= 2.0
    print(f"target (completion seen <= 2 s after the last commit): {'met' if seen else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--source",
        choices=("mirror", "controller"),
        default="mirror",
        help="where devices download artifacts: nginx serving an export, or the controller",
    )
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
