"""One simulated device: a real ``AgentDaemon`` in this process, its life and its traffic.

The daemon is the agent's own code (verification, journal, update state machine, model
store, statistics, probation, outbox, MQTT link); only what ``simulator.shared`` lists is
shared with other devices. The device's life is driven from outside:

- ``start``/``stop``: power on, and a clean shutdown (the agent says offline itself);
- ``kill``: the daemon's task is cancelled where it stands. What is on disk is what a
  SIGKILL would leave (every step was journaled and fsync'd before it ran), the MQTT
  connection is dropped without DISCONNECT so the broker publishes the will, and the next
  ``start`` recovers from the journal as a rebooted device would;
- ``arm_kill(state)``: the agent pauses when its journal reaches ``state`` (the agent's
  ``pause_in_state`` fault hook) and the device is killed there, once.

An application thread is not needed: the fleet's request task (``simulator.traffic``)
calls ``request``, which asks the in-process inference API from the event loop (or the
default executor for slowed devices).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from agent.config import AgentConfig
from agent.daemon import AgentDaemon
from agent.errors import AgentError, InferenceError
from agent.link.mqtt import Message
from agent.link.outbox import OutboxQueue
from agent.serving.server import ModelServer
from agent.update.fetcher import FetchLimits, HttpFetcher
from tensors import Array

from .plan import DevicePlan
from .shared import BoundedFetcher, SharedBackends, SharedModelCheck
from .workload import DigitsWorkload

__all__ = ["SimulatedDevice"]

logger = logging.getLogger(__name__)

KILL_POLL_S = 0.05
KILL_RETRY_S = 1.0


class SimulatedDevice:
    def __init__(
        self,
        plan: DevicePlan,
        config: AgentConfig,
        *,
        check: SharedModelCheck,
        backends: SharedBackends,
        fetch_limits: FetchLimits,
        download_slots: asyncio.Semaphore,
        on_publish: Callable[[str, Message], None],
        outbox: OutboxQueue | None = None,
        own_telemetry_task: bool = True,
    ) -> None:
        self.plan = plan
        self._outbox = outbox
        self.config = config
        self._check = check
        self._loader = backends.loader(plan.profile.speed_factor)
        self._fetch_limits = fetch_limits
        self._download_slots = download_slots
        self._on_publish = on_publish
        self._own_telemetry_task = own_telemetry_task
        self._in_flight = False  # a slowed device's request runs in the executor
        self.daemon: AgentDaemon | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._armed_state: str | None = None
        self._watch: asyncio.Task[None] | None = None
        self.kills = 0
        self.requests = 0
        self.request_errors = 0

    @property
    def device_id(self) -> str:
        return self.plan.device_id

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Power on: a fresh daemon over the device's data directory."""
        if self.running:
            return
        config = self.config
        if self._armed_state is not None:
            config = config.model_copy(update={"pause_in_state": self._armed_state})
        self.daemon = AgentDaemon(
            config,
            fetcher=BoundedFetcher(
                HttpFetcher(self._fetch_limits, free_bytes=self._free_bytes),
                self._download_slots,
            ),
            check_model=self._check,
            load_backend=self._loader,
            on_publish=lambda message: self._on_publish(self.device_id, message),
            outbox=self._outbox,
            own_telemetry_task=self._own_telemetry_task,
        )
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(self.daemon), name=self.device_id)
        if self._armed_state is not None:
            self._watch = asyncio.create_task(self._kill_when_paused(self._armed_state))

    async def _run(self, daemon: AgentDaemon) -> None:
        try:
            await daemon.run(self._stop)
        except asyncio.CancelledError:
            raise
        except AgentError as exc:
            logger.error("device %s stopped: %s", self.device_id, exc)
        except Exception:  # one device's failure must not end the simulation
            logger.exception("device %s failed", self.device_id)

    async def stop(self) -> None:
        """A clean shutdown: the agent publishes offline and disconnects."""
        if self._watch is not None:
            self._watch.cancel()
        if self._task is None:
            return
        self._stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def kill(self, *, fault: bool = True) -> None:
        """Die where it stands; the disk keeps what the journal wrote. ``fault``: an
        injected crash, counted (not the simulator ending a device that would not stop)."""
        if self._task is None or self._task.done():
            return
        self.kills += int(fault)
        task = self._task
        # A cancellation can be swallowed on its way out (Python 3.11's wait_for loses
        # one when its inner future completes at the same moment): cancel until it is
        # done. Waiting with asyncio.wait, not `await task`, keeps our own cancellation.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=KILL_RETRY_S)

    def arm_kill(self, state: str) -> None:
        """Kill the device once, when its next update reaches ``state``."""
        self._armed_state = state
        if self.running and self.daemon is not None:
            # The running daemon pauses there too: its updater reads the setting per step.
            updated = self.daemon.config.model_copy(update={"pause_in_state": state})
            self.daemon.models.set_config(updated)
            self._watch = asyncio.create_task(self._kill_when_paused(state))

    def disarm_kill(self) -> None:
        self._armed_state = None
        if self._watch is not None:
            self._watch.cancel()
        if self.daemon is not None:
            self.daemon.models.set_config(self.config)

    async def _kill_when_paused(self, state: str) -> None:
        while self.daemon is None or self.daemon.models.phase != state:
            await asyncio.sleep(KILL_POLL_S)
        self._armed_state = None
        await self.kill()
        logger.info("device %s killed in %s; rebooting", self.device_id, state)
        self.start()

    def publish_telemetry(self) -> None:
        """Queue the statistics windows that are due as telemetry, if running (the
        fleet's telemetry task calls it once per window: ``simulator.traffic``)."""
        if self.daemon is not None and self.running:
            self.daemon.publish_telemetry()

    def request(self, workload: DigitsWorkload, elapsed_s: float) -> None:
        """One application request, to every model the device serves (the fleet's models
        all read the workload's inputs); nothing when it serves none. A slowed device
        answers in the default executor; until it has, its next requests are skipped."""
        daemon = self.daemon
        if daemon is None or not self.running or self._in_flight or not daemon.serving.servers:
            return
        sample = workload.next_input(elapsed_s)
        asked = []
        for server in list(daemon.serving.servers.values()):
            serving = server.current
            if serving is not None:
                asked.append((server, {serving.signature.inputs[0].name: sample}))
        self.requests += len(asked)
        if not asked:
            return
        if self.plan.profile.speed_factor > 1.0:
            self._in_flight = True
            future = asyncio.get_running_loop().run_in_executor(None, _ask, asked)
            future.add_done_callback(self._answered)
        else:
            self.request_errors += _ask(asked)

    def _answered(self, future: asyncio.Future[int]) -> None:
        self._in_flight = False
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            logger.error("device %s: a request failed: %r", self.device_id, error)
            self.request_errors += 1
        else:
            self.request_errors += future.result()

    def _free_bytes(self, directory: Path) -> int:
        """The profile's disk, less what this device's models and downloads take."""
        used = sum(
            path.stat().st_size for path in self.config.data_dir.rglob("*") if path.is_file()
        )
        return max(0, self.plan.profile.disk_bytes - used)


def _ask(asked: list[tuple[ModelServer, dict[str, Array]]]) -> int:
    """Run each request; how many failed."""
    errors = 0
    for server, feeds in asked:
        try:
            server.infer(feeds)
        except InferenceError:
            errors += 1
    return errors
