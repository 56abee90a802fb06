"""Controller at scale: one rollout to 10,000 devices, and the HTTP API meanwhile.

Run from the repository root:
``.venv/bin/python bench/controller_scale.py [--devices 10000] [--postgres URL | --sqlite]``.

Setup: a Mosquitto of its own (anonymous, no limit on queued messages), a controller
subprocess using it, on a fresh schema of the PostgreSQL at ``--postgres`` (default:
``$EDGEFLEET_TEST_POSTGRES_URL``; the schema is dropped afterwards) or on its own SQLite
file with ``--sqlite``. The demo's digits model is trained in a child process, pushed and
released (no variant: the rollout, not the registry, is measured).

Devices: ``--devices`` of them, enrolled through the controller's public API, as a device
does: an operator's ``POST /api/v1/enrollment-tokens`` for the device's id, then the
device's ``POST /api/v1/enroll`` with it (no CSR: the controller runs without a CA),
``ENROLL_CONCURRENCY`` devices at a time. No agent runs: the question is the controller,
and a device that never connects changes nothing of what it publishes.

Online: a rollout assigns only devices that are online, so for each device the script
publishes, from one paho client, the retained ``{prefix}/<device>/state`` an agent
publishes when it connects (``protocol.State``, online, no model yet), and waits until the
controller's ``edgefleet_devices{online="true"}`` gauge (``/metrics``) counts them all.

Then one rollout of the release to all of them in one wave (``waves=100%``, no soak).
Measured:
- (a) seconds from the rollout's creation (the ``POST /api/v1/rollouts`` returned) until a
  real MQTT subscriber, subscribed to ``{prefix}/+/desired`` beforehand, has received a
  non-empty desired state for every device; and afterwards, that a fresh subscriber
  receives every one of them retained;
- (b) the controller's HTTP responsiveness: a probe in a thread of its own GETs
  ``/api/v1/models/digits/versions/1`` with the operator's token every 0.2 s (the next
  request starts 0.2 s after the previous one was sent, or at once if it took longer),
  with a timeout of ``PROBE_TIMEOUT_S``; p50, p99 and max latency and the timeouts, per
  phase: before the rollout (the baseline, ``--baseline-s`` seconds), and from the
  rollout's start until every desired state was seen;
- (c) the enrollment rate (devices per second over the whole enrollment), with the probe
  running then too;
- (d) a bound for (a), measured in the same run on the same Mosquitto: a bare paho client
  publishing as many retained QoS 1 messages of the same size, all in flight at once,
  until the last PUBACK;
- the controller log's count of "database is locked" and of failed loop steps.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agents_per_process import POSTGRES_URL_ENV, postgres_schema
from fleet_fanout import publish_bound_s, raise_file_limit

from apiclient import AsyncControllerClient
from protocol import State
from simulator.controller_process import ControllerProcess, port_or_free
from simulator.demo import MODEL, build_demo_models_apart
from tests.brokers import MosquittoServer, find_mosquitto

TOPIC_PREFIX = "edgefleet/v1"
ENROLL_CONCURRENCY = 16
PROBE_INTERVAL_S = 0.2
PROBE_TIMEOUT_S = 10.0
PUBLISH_DEADLINE_S = 1200.0
LABELS = {"fleet": "scale"}


@dataclass
class HttpProbe:
    """GETs ``path`` every ``PROBE_INTERVAL_S`` in its own thread; latencies by phase."""

    url: str
    token: str
    path: str
    phase: str = "setup"
    latencies: dict[str, list[float]] = field(default_factory=dict)
    timeouts: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="http-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=PROBE_TIMEOUT_S) as client:
            while not self._stop.is_set():
                phase = self.phase
                sent = time.perf_counter()
                try:
                    response = client.get(self.path)
                    elapsed = time.perf_counter() - sent
                    if response.status_code != 200:
                        self.errors[phase] = self.errors.get(phase, 0) + 1
                    self.latencies.setdefault(phase, []).append(elapsed)
                except httpx.TimeoutException:
                    self.timeouts[phase] = self.timeouts.get(phase, 0) + 1
                    self.latencies.setdefault(phase, []).append(time.perf_counter() - sent)
                except httpx.HTTPError:
                    self.errors[phase] = self.errors.get(phase, 0) + 1
                self._stop.wait(max(0.0, PROBE_INTERVAL_S - (time.perf_counter() - sent)))

    def row(self, phase: str, label: str) -> str:
        values = sorted(self.latencies.get(phase, []))
        if not values:
            return f"| {label} | no requests | | | | |"
        p50 = statistics.median(values)
        p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
        return (
            f"| {label} | {len(values)} | {p50 * 1000:.1f} ms | {p99 * 1000:.1f} ms "
            f"| {values[-1] * 1000:.1f} ms | {self.timeouts.get(phase, 0)} timeouts, "
            f"{self.errors.get(phase, 0)} errors |"
        )


class DesiredWatcher:
    """A paho subscriber to every device's desired state; when each first arrived."""

    def __init__(self, port: int, client_id: str) -> None:
        self.seen: dict[str, float] = {}
        self.sizes: list[int] = []
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.on_message = self._on_message
        self._subscribed = threading.Event()
        self._client.on_subscribe = lambda *_args: self._subscribed.set()
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(f"{TOPIC_PREFIX}/+/desired", qos=1)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("the desired-state subscriber got no SUBACK")

    def _on_message(self, _client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        if not message.payload:
            return
        device = message.topic.split("/")[-2]
        with self._lock:
            if device not in self.seen:
                self.seen[device] = time.monotonic()
                self.sizes.append(len(message.payload))

    def count(self) -> int:
        with self._lock:
            return len(self.seen)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def retained_count(port: int, expected: int, timeout_s: float = 60.0) -> int:
    """How many non-empty retained desired states a fresh subscriber receives."""
    watcher = DesiredWatcher(port, "bench-retained")
    deadline = time.monotonic() + timeout_s
    last, last_change = -1, time.monotonic()
    try:
        while time.monotonic() < deadline:
            count = watcher.count()
            if count >= expected:
                break
            if count != last:
                last, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > 5.0:
                break
            time.sleep(0.1)
        return watcher.count()
    finally:
        watcher.close()


async def enroll_all(url: str, token: str, count: int) -> float:
    """Enroll ``count`` devices through the API; returns the seconds it took."""
    gate = asyncio.Semaphore(ENROLL_CONCURRENCY)
    limits = httpx.Limits(max_connections=ENROLL_CONCURRENCY * 2)
    done = 0
    async with (
        httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120, limits=limits
        ) as operator,
        httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as device,
    ):

        async def one(index: int) -> None:
            nonlocal done
            name = device_id(index)
            async with gate:
                answer = await operator.post(
                    "/api/v1/enrollment-tokens", json={"labels": LABELS, "device_id": name}
                )
                answer.raise_for_status()
                enrolled = await device.post(
                    "/api/v1/enroll", json={"token": answer.json()["token"], "device_id": name}
                )
                enrolled.raise_for_status()
            done += 1
            if done % 1000 == 0:
                print(f"  enrolled {done}", flush=True)

        started = time.perf_counter()
        await asyncio.gather(*(one(index) for index in range(count)))
        return time.perf_counter() - started


def publish_online_states(port: int, count: int) -> float:
    """Each device's retained "online" state, as its agent publishes it on connecting;
    returns the seconds until the broker acknowledged the last."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-states")
    client.max_inflight_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.perf_counter()
    infos = [
        client.publish(
            f"{TOPIC_PREFIX}/{device_id(index)}/state",
            State(
                device_id=device_id(index), online=True, agent_version="bench", phase="idle"
            ).to_payload(),
            qos=1,
            retain=True,
        )
        for index in range(count)
    ]
    for info in infos:
        info.wait_for_publish(timeout=120)
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return elapsed


async def wait_online(url: str, token: str, count: int, timeout_s: float = 600.0) -> float:
    """Seconds until the controller's gauge counts ``count`` devices online."""
    started = time.perf_counter()
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as client:
        while time.perf_counter() - started < timeout_s:
            text = (await client.get("/metrics")).text
            for line in text.splitlines():
                online = line.startswith('edgefleet_devices{online="true"}')
                if online and float(line.split()[-1]) >= count:
                    return time.perf_counter() - started
            await asyncio.sleep(1.0)
    raise RuntimeError(f"the controller did not see {count} devices online in {timeout_s} s")


def device_id(index: int) -> str:
    return f"scale-{index:06d}"


async def push_release(api: AsyncControllerClient, directory: Path) -> str:
    models = await build_demo_models_apart(directory)
    pushed = await api.push(MODEL, models.good, models.validation)
    return await api.release(MODEL, int(pushed["version"]))


@contextlib.contextmanager
def broker_and_controller(state: Path, database_url: str) -> Iterator[ControllerProcess]:
    mosquitto = MosquittoServer(
        find_mosquitto() or "mosquitto",
        state,
        extra_config="allow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 0\n",
    )
    mosquitto.start()
    controller = ControllerProcess(
        state,
        port_or_free(0),
        0,
        broker=f"mqtt://127.0.0.1:{mosquitto.port}",
        database_url=database_url,
    )
    try:
        controller.start()
        print(f"controller pid {controller.process.pid if controller.process else '?'}", flush=True)
        yield controller
    finally:
        controller.stop()
        mosquitto.stop()


def log_counts(log: Path) -> tuple[int, int, int]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return (
        text.count("database is locked"),
        text.count("fleet loop step failed"),
        text.count("publishing desired state failed"),
    )


async def run(args: argparse.Namespace, state: Path) -> None:
    load_at_start = os.getloadavg()[0]
    with (
        postgres_schema(None if args.sqlite else args.postgres) as database_url,
        broker_and_controller(state, database_url) as controller,
    ):
        token = controller.create_token("operator")
        api = AsyncControllerClient(controller.url, token)
        release = await push_release(api, state / "models")
        version = release.partition(":")[2]
        probe = HttpProbe(controller.url, token, f"/api/v1/models/{MODEL}/versions/{version}")
        probe.start()
        try:
            probe.phase = "enroll"
            print(f"enrolling {args.devices} devices through the API", flush=True)
            enroll_s = await enroll_all(controller.url, token, args.devices)
            print(f"enrolled {args.devices} in {enroll_s:.1f} s", flush=True)
            port = _broker_port(controller)
            probe.phase = "online"
            states_s = await asyncio.to_thread(publish_online_states, port, args.devices)
            online_s = await wait_online(controller.url, token, args.devices)
            print(
                f"{args.devices} online states published in {states_s:.1f} s; the controller "
                f"counted them all online after {online_s:.1f} s",
                flush=True,
            )
            probe.phase = "baseline"
            await asyncio.sleep(args.baseline_s)
            watcher = DesiredWatcher(port, "bench-watcher")
            probe.phase = "rollout"
            rollout_id = await api.create_rollout(
                {
                    "release": release,
                    "selector": "fleet=scale",
                    "waves": "100%",
                    "soak": "0s",
                    "report_timeout": "1h",
                    "gates": {"min_health_requests": 0},
                }
            )
            started = time.monotonic()
            print(f"rollout {rollout_id} started", flush=True)
            deadline = started + PUBLISH_DEADLINE_S
            next_note = started + 10
            while watcher.count() < args.devices and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                if time.monotonic() >= next_note:
                    print(
                        f"  [{time.monotonic() - started:5.0f} s] {watcher.count()} desired "
                        "states seen",
                        flush=True,
                    )
                    next_note += 10
            probe.phase = "after"
            seen = dict(watcher.seen)
            sizes = list(watcher.sizes)
            watcher.close()
        finally:
            probe.stop()
        await api.close()
        retained = await asyncio.to_thread(retained_count, port, args.devices)
        payload = int(statistics.median(sizes)) if sizes else 1000
        bound_s = await asyncio.to_thread(publish_bound_s, port, payload, args.devices)
        locked, loop_failures, publish_failures = log_counts(controller.log)
    times = sorted(t - started for t in seen.values())
    all_s = times[-1] if len(times) >= args.devices else float("nan")
    database = "SQLite" if args.sqlite else "PostgreSQL"
    print()
    print("## Controller at scale")
    print()
    print(
        f"{args.devices} devices, one rollout in one wave, controller on {database} with "
        f"Mosquitto; Python {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"load average {load_at_start:.1f} at start, {os.getloadavg()[0]:.1f} at the end."
    )
    print()
    print("| measure | value |")
    print("| --- | ---: |")
    print(
        f"| (c) enrollment through the API | {args.devices / enroll_s:.1f} devices/s "
        f"({enroll_s:.1f} s, {ENROLL_CONCURRENCY} at a time) |"
    )
    first = f"{times[0]:.2f} s" if times else "none"
    print(
        f"| devices online: states published -> controller counted all online | {online_s:.1f} s |"
    )
    print(f"| (a) rollout start -> first desired state seen | {first} |")
    print(f"| (a) rollout start -> all {args.devices} desired states seen | {all_s:.2f} s |")
    print(f"| desired states seen / retained afterwards | {len(seen)} / {retained} |")
    print(f"| desired-state size (median) | {payload} bytes |")
    print(
        f"| (d) bound: {args.devices} retained QoS 1 by bare paho, all in flight "
        f"| {bound_s:.2f} s |"
    )
    if times:
        print(f"| (a) / (d) | {all_s / bound_s:.1f}x |")
    print()
    print("| probe phase | requests | p50 | p99 | max | failures |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    print(probe.row("enroll", "(c) during enrollment"))
    print(probe.row("baseline", f"(b) baseline, {args.baseline_s:.0f} s before the rollout"))
    print(probe.row("rollout", "(b) rollout start -> all desired states seen"))
    print()
    print(
        f"controller log: {locked} 'database is locked', {loop_failures} failed loop steps, "
        f"{publish_failures} failed publish passes"
    )
    met_time = len(times) >= args.devices and all_s <= 30.0
    rollout = sorted(probe.latencies.get("rollout", [0.0]))
    met_probe = rollout[-1] <= 1.0 and not probe.timeouts.get("rollout")
    print(f"target (all published <= 30 s): {'met' if met_time else 'NOT met'}")
    print(f"target (probe never > 1 s during the rollout): {'met' if met_probe else 'NOT met'}")


def _broker_port(controller: ControllerProcess) -> int:
    return int(controller.broker.rsplit(":", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--postgres", default=os.environ.get(POSTGRES_URL_ENV, ""))
    parser.add_argument("--sqlite", action="store_true", help="the controller on SQLite")
    parser.add_argument("--baseline-s", type=float, default=10.0)
    parser.add_argument("--state-dir", type=Path, help="keep the controller's and broker's files")
    args = parser.parse_args()
    if not args.sqlite and not args.postgres:
        parser.error(f"--postgres URL (or ${POSTGRES_URL_ENV}) or --sqlite is needed")
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]), flush=True)
    raise_file_limit()
    if args.state_dir:
        args.state_dir.mkdir(parents=True, exist_ok=True)
        asyncio.run(run(args, args.state_dir))
        return
    with tempfile.TemporaryDirectory(prefix="edgefleet-scale-") as directory:
        asyncio.run(run(args, Path(directory)))


if __name__ == "__main__":
    main()
