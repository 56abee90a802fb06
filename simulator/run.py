"""Run a scenario: enroll the fleet, start its agents, inject faults, roll out, report.

The run has three phases. Setup enrolls every planned device through the controller's
public enrollment endpoint (the agent's own ``enroll``), builds its agent settings, and
starts the agents in bounded batches until the controller reports them online. Each
rollout of the scenario is then created through the API, watched once a second until it
completes or aborts, and given time to settle (devices still finishing probation or
rolling back). Teardown stops workloads and agents cleanly.

Devices are labelled ``sim-run=<run tag>`` and every rollout's selector includes it, so a
run never touches devices it did not enroll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, load_config
from agent.link.enroll import enroll
from agent.update.fetcher import FetchLimits
from agent.update.sandbox import SandboxLimits
from apiclient import ApiError, AsyncControllerClient

from .device import SimulatedDevice
from .plan import FleetPlan, plan_fleet
from .proxies import BrokerProxy, CorruptingArtifactServer
from .recorder import Recorder, RolloutTimeline
from .scenario import RolloutSpec, Scenario
from .shared import MemoryOutbox, SharedBackends, SharedModelCheck, Shortcuts
from .traffic import run_fleet_requests, run_fleet_telemetry
from .workload import DigitsWorkload

__all__ = ["RunResult", "run_scenario"]

logger = logging.getLogger(__name__)

POLL_S = 1.0
POLL_ATTEMPTS = 5
ONLINE_TIMEOUT_S = 120.0
FINAL_STATUSES = ("completed", "aborted")
ENROLL_CONCURRENCY = 8
STOP_TIMEOUT_S = 30.0


@dataclass
class RunResult:
    plan: FleetPlan
    scenario: Scenario
    recorder: Recorder
    devices: list[SimulatedDevice]
    shortcuts: Shortcuts
    setup_s: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)
    expectation_failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.expectation_failures


async def run_scenario(
    scenario: Scenario,
    *,
    seed: int,
    api: AsyncControllerClient,
    work_dir: Path,
    releases: Mapping[str, str] | None = None,
    run_tag: str | None = None,
    milestone: Callable[[str], None] | None = None,
) -> RunResult:
    """Run ``scenario`` against the controller behind ``api``; the result holds everything
    the report needs. ``releases`` resolves ``@name`` releases of the scenario.
    ``milestone`` (benchmarks) is called with "online" once every device is up, then with
    "settled <i>" and "observed <i>" for each rollout."""
    note = milestone or (lambda _name: None)
    run_tag = run_tag or f"sim{seed}-{secrets.token_hex(2)}"
    plan = plan_fleet(scenario, seed=seed, run_tag=run_tag)
    recorder = Recorder()
    shortcuts = Shortcuts(
        state_on_tmpfs=_on_tmpfs(work_dir),
        memory_outbox=scenario.fleet.outbox == "memory",
        downloads_at_once=scenario.fleet.downloads_at_once
        if scenario.fleet.downloads_at_once < scenario.fleet.devices
        else 0,
    )
    fleet = _Fleet(scenario, plan, api, work_dir, recorder)
    result = RunResult(plan, scenario, recorder, fleet.devices, shortcuts)
    try:
        await fleet.set_up()
        result.setup_s = recorder.now_s()
        note("online")
        for group in _started_together(scenario.rollouts):
            timelines = await asyncio.gather(
                *(
                    fleet.roll_out(index, spec, _resolve(spec.release, releases or {}), note)
                    for index, spec in group
                )
            )
            for (index, spec), timeline in zip(group, timelines, strict=True):
                recorder.rollouts.append(timeline)
                result.expectation_failures += _check_expectations(index, spec, timeline, recorder)
    except BaseException:
        logger.exception("the simulation failed; stopping the fleet")
        raise
    finally:
        await fleet.tear_down()
    result.counters = {
        "sandbox_checks_run": fleet.check.checks_run,
        "runtime_sessions": fleet.backends.sessions,
        "broker_cuts": fleet.proxy.cuts if fleet.proxy else 0,
        "corrupted_downloads": fleet.corrupting.requests if fleet.corrupting else 0,
        "kills": sum(device.kills for device in fleet.devices),
        "requests": sum(device.requests for device in fleet.devices),
        "request_errors": sum(device.request_errors for device in fleet.devices),
        "phase_events": recorder.phase_events,
    }
    return result


class _Fleet:
    def __init__(
        self,
        scenario: Scenario,
        plan: FleetPlan,
        api: AsyncControllerClient,
        work_dir: Path,
        recorder: Recorder,
    ) -> None:
        self.scenario = scenario
        self.plan = plan
        self.api = api
        self.work_dir = work_dir
        self.recorder = recorder
        self.check = SharedModelCheck(SandboxLimits(memory_bytes=2048 << 20, cpu_s=60, wall_s=120))
        self.backends = SharedBackends()
        self.devices: list[SimulatedDevice] = []
        self.proxy: BrokerProxy | None = None
        self.corrupting: CorruptingArtifactServer | None = None
        self.selector = f"sim-run={plan.run_tag}"
        self._tasks: list[asyncio.Task[None]] = []
        self._rollout_started: float | None = None

    # -- setup ---------------------------------------------------------------------------

    async def set_up(self) -> None:
        configs = await self._enroll_all()
        broker = configs[0].broker_host, configs[0].broker_port
        if any(d.broker_cuts or d.profile.network_flakiness for d in self.plan.devices):
            self.proxy = BrokerProxy(*broker)
        if any(d.corrupt_artifacts for d in self.plan.devices):
            self.corrupting = CorruptingArtifactServer(configs[0].controller_url)
            corrupt_url = await self.corrupting.start()
        fetch_limits = FetchLimits(
            min_deadline_s=30.0, max_attempts=3, backoff_max_s=2.0, free_disk_margin_bytes=0
        )
        download_slots = asyncio.Semaphore(self.scenario.fleet.downloads_at_once)
        for device_plan, config in zip(self.plan.devices, configs, strict=True):
            updates: dict[str, Any] = {}
            if self.proxy and (device_plan.broker_cuts or device_plan.profile.network_flakiness):
                port = await self.proxy.listen(device_plan.device_id)
                updates["broker_url"] = f"mqtt://127.0.0.1:{port}"
            if device_plan.corrupt_artifacts:
                updates["controller_url"] = corrupt_url
            self.devices.append(
                SimulatedDevice(
                    device_plan,
                    config.model_copy(update=updates) if updates else config,
                    check=self.check,
                    backends=self.backends,
                    fetch_limits=fetch_limits,
                    download_slots=download_slots,
                    on_publish=self.recorder.on_publish,
                    outbox=MemoryOutbox() if self.scenario.fleet.outbox == "memory" else None,
                    own_telemetry_task=False,
                )
            )
        await self._start_all()
        started = time.monotonic()
        # One task each for the whole fleet's requests and telemetry (simulator.traffic).
        workload = DigitsWorkload(
            self.scenario.workload,
            random.Random(f"{self.plan.seed}/workload"),  # noqa: S311 - simulation
        )
        requests = run_fleet_requests(self.devices, workload, started)
        self._tasks.append(asyncio.create_task(requests, name="requests"))
        self._tasks.append(
            asyncio.create_task(
                run_fleet_telemetry(self.devices, self.scenario.fleet.stats_window_s),
                name="telemetry",
            )
        )
        for device in self.devices:
            profile = device.plan.profile
            if profile.offline or profile.network_flakiness or device.plan.broker_cuts:
                self._tasks.append(asyncio.create_task(self._device_life(device)))

    async def _enroll_all(self) -> list[AgentConfig]:
        labels = {**self.scenario.fleet.labels, "sim-run": self.plan.run_tag}
        gate = asyncio.Semaphore(ENROLL_CONCURRENCY)
        window_s = self.scenario.fleet.stats_window_s

        async def enroll_one(device_id: str, profile: str) -> AgentConfig:
            async with gate:
                token = await self.api.enrollment_token({**labels, "profile": profile}, device_id)
                data_dir = self.work_dir / "devices" / device_id
                _, config_path = await asyncio.to_thread(
                    enroll, self.api.url, token, data_dir, device_id=device_id
                )
            config = load_config(config_path, environ={})
            return config.model_copy(
                update={
                    "inference_api": False,
                    "stats_window_s": window_s,
                    "shutdown_timeout_s": 5.0,
                    "sandbox_wall_s": 120.0,
                }
            )

        return list(
            await asyncio.gather(
                *(enroll_one(d.device_id, d.profile.name) for d in self.plan.devices)
            )
        )

    async def _start_all(self) -> None:
        batch = self.scenario.fleet.start_concurrency
        for first in range(0, len(self.devices), batch):
            for device in self.devices[first : first + batch]:
                if not _offline_at(device, 0.0):
                    device.start()
            await self._wait_connected(self.devices[first : first + batch])
        await self._wait_online()

    async def _wait_connected(self, devices: list[SimulatedDevice]) -> None:
        deadline = time.monotonic() + ONLINE_TIMEOUT_S
        while time.monotonic() < deadline:
            if all(d.daemon is not None and d.daemon.link.connected for d in devices if d.running):
                return
            await asyncio.sleep(0.1)

    async def _wait_online(self) -> None:
        """Until the controller has seen every running device online."""
        expected = sum(1 for d in self.devices if d.running)
        deadline = time.monotonic() + ONLINE_TIMEOUT_S
        while time.monotonic() < deadline:
            online = await self._count_devices(online=True)
            if online >= expected:
                return
            await asyncio.sleep(0.5)
        logger.warning("the controller saw %d of %d devices online", online, expected)

    async def _count_devices(self, **query: Any) -> int:
        total, offset, page = 0, 0, 1000
        while True:
            rows = await self.api.request(
                "GET",
                "/api/v1/devices",
                params={"selector": self.selector, "limit": page, "offset": offset, **query},
            )
            total += len(rows)
            if len(rows) < page:
                return total
            offset += page

    # -- faults while running ------------------------------------------------------------

    async def _device_life(self, device: SimulatedDevice) -> None:
        """Offline periods and broker cuts for one device, on its own seeded clock."""
        profile = device.plan.profile
        rng = device.plan.rng(self.plan.seed, "life")
        moments: list[tuple[float, str, float]] = []
        for start_s, duration_s in profile.offline:
            moments.append((start_s, "offline", duration_s))
        next_flake = _next_flake(rng, profile.network_flakiness, 0.0)
        while True:
            now = self.recorder.now_s()
            for at_s, kind, duration_s in [m for m in moments if m[0] <= now]:
                moments.remove((at_s, kind, duration_s))
                await self._offline(device, duration_s)
            if self.proxy and self._rollout_started is not None:
                since_rollout = time.monotonic() - self._rollout_started
                for cut in [c for c in device.plan.broker_cuts if c.at_s <= since_rollout]:
                    device.plan.broker_cuts.remove(cut)
                    self.proxy.cut(device.device_id, block_s=cut.duration_s)
            if self.proxy and next_flake is not None and now >= next_flake:
                self.proxy.cut(device.device_id, block_s=rng.uniform(0.5, 3.0))
                next_flake = _next_flake(rng, profile.network_flakiness, now)
            await asyncio.sleep(0.5)

    async def _offline(self, device: SimulatedDevice, duration_s: float) -> None:
        logger.info("device %s goes offline for %.0f s", device.device_id, duration_s)
        await device.stop()
        await asyncio.sleep(duration_s)
        device.start()

    # -- rollouts ------------------------------------------------------------------------

    async def roll_out(
        self, index: int, spec: RolloutSpec, release: str, note: Callable[[str], None]
    ) -> RolloutTimeline:
        for device in self.devices:
            state = device.plan.kills.get(index)
            if state is not None:
                device.arm_kill(state)
        body = {
            "release": release,
            "selector": self.selector,
            "waves": spec.waves,
            "soak": spec.soak,
            "min_reporting": spec.min_reporting,
            "report_timeout": spec.report_timeout,
            "on_failure": spec.on_failure,
            "require_observed": spec.require_observed,
            "gates": spec.gates,
            "probation": spec.probation,
        }
        rollout_id = await self.api.create_rollout(body)
        if self._rollout_started is None:  # planned broker cuts count from the first one
            self._rollout_started = time.monotonic()
        timeline = RolloutTimeline(index, rollout_id, release, self.recorder.now_s())
        logger.info("rollout %d (%s) of %s started", index, rollout_id, release)
        deadline = time.monotonic() + spec.timeout_s
        detail = await self._rollout(rollout_id)
        while True:
            timeline.add(self.recorder.now_s(), detail)
            if detail["status"] in FINAL_STATUSES or time.monotonic() > deadline:
                break
            await asyncio.sleep(POLL_S)
            detail = await self._rollout(rollout_id)
        await self._settle(
            release, completed=detail["status"] == "completed", timeout_s=spec.settle_timeout_s
        )
        note(f"settled {index}")
        await asyncio.sleep(spec.observe_after_s)
        note(f"observed {index}")
        timeline.final = await self._rollout(rollout_id)
        timeline.add(self.recorder.now_s(), timeline.final)
        for device in self.devices:
            device.disarm_kill()
        logger.info("rollout %d ended %s", index, timeline.final["status"])
        return timeline

    async def _rollout(self, rollout_id: str) -> dict[str, Any]:
        """The rollout's detail; a controller that did not answer (a loaded one can drop
        a kept-alive connection) is asked again, up to ``POLL_ATTEMPTS`` times."""
        for attempt in range(1, POLL_ATTEMPTS + 1):
            try:
                return await self.api.rollout(rollout_id)
            except ApiError as exc:
                if exc.status is not None or attempt == POLL_ATTEMPTS:
                    raise
                logger.warning("asking for rollout %s again: %s", rollout_id, exc)
                await asyncio.sleep(POLL_S)
        raise AssertionError("unreachable")

    async def _settle(self, release: str, *, completed: bool, timeout_s: float) -> None:
        """Wait, at most ``timeout_s``, until the fleet is done with the rollout.

        After a completed rollout every running device gets the release, including one
        that was reconnecting when its wave started (the controller assigns it when it
        is back): wait for each one's final event. After an abort or a pause, wait until
        no running device is in the middle of an update (finishing probation, or
        applying the rollback an abort sent)."""
        await asyncio.sleep(2 * POLL_S)  # let the last desired states arrive
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            running = [device for device in self.devices if device.running]
            if completed:
                finals = self.recorder.final_events(release)
                done = all(device.device_id in finals for device in running)
            else:
                done = all(_settled(device) for device in running)
            if done:
                return
            await asyncio.sleep(0.5)
        logger.warning("the fleet had not settled %.0f s after the rollout", timeout_s)

    # -- teardown ------------------------------------------------------------------------

    async def tear_down(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Stop cleanly, but not forever: a device that has not stopped in time is killed.
        stopping = [asyncio.create_task(device.stop()) for device in self.devices]
        _, late = await asyncio.wait(stopping, timeout=STOP_TIMEOUT_S)
        if late:
            logger.warning(
                "%d devices did not stop in %.0f s; killing them", len(late), STOP_TIMEOUT_S
            )
            for task in late:
                task.cancel()
            await asyncio.gather(
                *(device.kill(fault=False) for device in self.devices), return_exceptions=True
            )
        if self.proxy:
            await self.proxy.close()
        if self.corrupting:
            await self.corrupting.close()


def _started_together(specs: list[RolloutSpec]) -> list[list[tuple[int, RolloutSpec]]]:
    """The rollouts in groups that start at once (``with_previous``), in order."""
    groups: list[list[tuple[int, RolloutSpec]]] = []
    for index, spec in enumerate(specs):
        if spec.with_previous and groups:
            groups[-1].append((index, spec))
        else:
            groups.append([(index, spec)])
    return groups


def _settled(device: SimulatedDevice) -> bool:
    daemon = device.daemon
    return daemon is None or daemon.models.phase in ("idle", "committed", "failed", "rolled_back")


def _offline_at(device: SimulatedDevice, t_s: float) -> bool:
    return any(start <= t_s < start + length for start, length in device.plan.profile.offline)


def _next_flake(rng: random.Random, per_min: float, now_s: float) -> float | None:
    return None if per_min <= 0 else now_s + rng.expovariate(per_min / 60.0)


def _resolve(release: str, releases: Mapping[str, str]) -> str:
    if release.startswith("@"):
        try:
            return releases[release[1:]]
        except KeyError:
            raise ValueError(
                f"the scenario names release {release}, which was not prepared"
            ) from None
    return release


def _on_tmpfs(path: Path) -> bool:
    with contextlib.suppress(OSError):
        mounts = Path("/proc/mounts").read_text().splitlines()
        resolved = str(path.resolve())
        best = ("", "")
        for line in mounts:
            parts = line.split()
            if len(parts) >= 3 and resolved.startswith(parts[1]) and len(parts[1]) > len(best[0]):
                best = (parts[1], parts[2])
        return best[1] == "tmpfs"
    return False


def _check_expectations(
    index: int, spec: RolloutSpec, timeline: RolloutTimeline, recorder: Recorder
) -> list[str]:
    expect = spec.expect
    final = timeline.final or {}
    problems = []
    if expect.status is not None and final.get("status") != expect.status:
        problems.append(f"rollout {index}: status {final.get('status')}, expected {expect.status}")
    counts = recorder.outcome_counts(timeline.release)
    for outcome in ("committed", "rolled_back", "failed"):
        wanted = getattr(expect, outcome)
        if wanted is not None and counts.get(outcome, 0) != wanted:
            problems.append(
                f"rollout {index}: {counts.get(outcome, 0)} devices {outcome}, expected {wanted}"
            )
    return problems
