"""Costs shared between simulated devices: the shortcuts the report lists.

On real hardware each device checks a new model in its own sandbox subprocess and loads
its own runtime session. A thousand simulated devices on two cores cannot, so:

- ``SharedModelCheck`` runs the real sandboxed check (``agent.update.sandbox.check_model``) once
  per artifact and check bundle and gives every device the same verdict, failure included. The check
  still happens only after that device's own download was verified against the signed
  hash, so a device with a corrupted download never reaches it;
- ``SharedBackends`` loads one runtime session per stored artifact and lets every device
  run on it (ONNX Runtime sessions are safe to call from many threads);
- ``SlowBackend`` makes a device's inference take ``speed_factor`` times as long, by
  sleeping the difference in the calling thread, so latency statistics, probation and the
  controller's gates see a slow device;
- ``simulator.traffic`` sends the whole fleet's requests from one task, and rolls every
  device's statistics window and queues its telemetry from another, rather than a task
  and a timer per device.

Every shortcut that is on is named in ``Shortcuts.names()`` and so in the report.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.backends import load_backend
from agent.link.outbox import DEFAULT_MAX_MESSAGES, OutboxMessage
from agent.update.fetcher import DownloadOutcome, Fetcher
from agent.update.sandbox import SandboxLimits, check_model
from protocol import Release
from tensors import Array, InferenceBackend, ModelFormat, RuntimeOptions, TensorSpec

__all__ = [
    "BoundedFetcher",
    "MemoryOutbox",
    "SharedBackends",
    "SharedModelCheck",
    "Shortcuts",
    "SlowBackend",
]


@dataclass(frozen=True)
class Shortcuts:
    shared_model_check: bool = True
    shared_sessions: bool = True
    no_inference_port: bool = True
    state_on_tmpfs: bool = False
    memory_outbox: bool = False
    downloads_at_once: int = 0
    fleet_requests_task: bool = True
    fleet_telemetry_task: bool = True

    def names(self) -> list[str]:
        described = {
            "shared_model_check": "the sandboxed model check runs once per artifact, "
            "not once per device (each device still verifies its own download's hash)",
            "shared_sessions": "devices share one runtime session per artifact; "
            "inference is slowed per device by its speed factor",
            "no_inference_port": "applications call the in-process Python API; no device "
            "opens an HTTP inference port",
            "state_on_tmpfs": "device state (journal, outbox, model store) lives on tmpfs, "
            "so fsync costs almost nothing",
            "memory_outbox": "each device's outbox is kept in memory (it survives the "
            "device's simulated crashes, not the simulator's): no SQLite file per device",
            "fleet_requests_task": "one task sends the whole fleet's requests (one Poisson "
            "stream, each request to a device drawn at random), not one per device",
            "fleet_telemetry_task": "one task rolls every device's statistics window and "
            "queues its telemetry, each device once per window; on a device the agent's "
            "own task does",
        }
        names = [text for name, text in described.items() if getattr(self, name)]
        if self.downloads_at_once:
            names.append(
                f"at most {self.downloads_at_once} devices download at once: the whole "
                "fleet shares this process's file descriptors"
            )
        return names


class SharedModelCheck:
    """``ModelChecker`` that checks each artifact once and shares the verdict."""

    def __init__(self, limits: SandboxLimits) -> None:
        self._limits = limits
        self._verdicts: dict[tuple[str, str, float | None], asyncio.Future[object]] = {}
        self.checks_run = 0

    async def __call__(
        self, path: Path, bundle: Path, release: Release, budget_ms: float | None
    ) -> object:
        key = (release.artifact.sha256, release.check_bundle.sha256, budget_ms)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = asyncio.ensure_future(self._check(path, bundle, release, budget_ms))
            self._verdicts[key] = verdict
        # shield: one device's cancellation (a simulated crash) must not cancel the others'.
        return await asyncio.shield(verdict)

    async def _check(
        self, path: Path, bundle: Path, release: Release, budget_ms: float | None
    ) -> object:
        self.checks_run += 1
        return await check_model(
            path, release, check_bundle=bundle, latency_budget_ms=budget_ms, limits=self._limits
        )


class SharedBackends:
    """``BackendLoader`` with one session per artifact (the store's directory name)."""

    def __init__(self) -> None:
        self._backends: dict[str, InferenceBackend] = {}

    def loader(self, speed_factor: float) -> SharedLoader:
        return SharedLoader(self, speed_factor)

    def load(
        self, path: Path, model_format: ModelFormat, options: RuntimeOptions
    ) -> InferenceBackend:
        # Stored artifacts live in models/sha256-<hex>/: the directory names the content.
        key = path.parent.name
        backend = self._backends.get(key)
        if backend is None:
            backend = load_backend(path, model_format, options)
            self._backends[key] = backend
        return backend

    @property
    def sessions(self) -> int:
        return len(self._backends)


@dataclass(frozen=True)
class SharedLoader:
    backends: SharedBackends
    speed_factor: float

    def __call__(
        self, path: Path, model_format: ModelFormat, options: RuntimeOptions
    ) -> InferenceBackend:
        backend = self.backends.load(path, model_format, options)
        return backend if self.speed_factor <= 1.0 else SlowBackend(backend, self.speed_factor)


class SlowBackend:
    """A backend that takes ``speed_factor`` times as long as the one it wraps."""

    def __init__(self, inner: InferenceBackend, speed_factor: float) -> None:
        self._inner = inner
        self._extra = speed_factor - 1.0

    @property
    def runtime(self) -> str:
        return self._inner.runtime

    @property
    def platform(self) -> str:
        return self._inner.platform

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inner.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._inner.outputs

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        started = time.perf_counter()
        outputs = self._inner.run(feeds)
        time.sleep((time.perf_counter() - started) * self._extra)
        return outputs


class MemoryOutbox:
    """``OutboxQueue`` in memory, bounded like the agent's: a full queue drops its oldest.

    A simulated device keeps the same object across its simulated crashes, so what the
    agent queued before a kill is still there after the reboot, as on a device's disk.
    """

    def __init__(self, max_messages: int = DEFAULT_MAX_MESSAGES) -> None:
        # A list, not a deque: it is empty nearly always, and an empty deque holds a block
        # of 64 slots (thousands of devices); popping the front of a short list is cheap.
        self._messages: list[OutboxMessage] = []
        self._max_messages = max_messages
        self._next_id = 1
        self._sequences: dict[str, int] = {}
        self._dropped = 0

    def put(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        if len(self._messages) >= self._max_messages:
            del self._messages[0]
            self._dropped += 1
        message_id = self._next_id
        self._next_id += 1
        self._messages.append(OutboxMessage(message_id, topic, bytes(payload), qos, retain))
        return message_id

    def peek(self, limit: int) -> list[OutboxMessage]:
        return self._messages[:limit]

    def ack(self, message_id: int) -> None:
        for message in self._messages:
            if message.id == message_id:
                self._messages.remove(message)
                return

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def dropped(self) -> int:
        return self._dropped

    def next_sequence(self, name: str) -> int:
        value = self._sequences.get(name, 0) + 1
        self._sequences[name] = value
        return value

    def close(self) -> None:
        """Nothing to close: the queue outlives the daemon, as a file would."""


class BoundedFetcher:
    """A device's ``Fetcher``, waiting for one of the fleet's shared download slots."""

    def __init__(self, inner: Fetcher, slots: asyncio.Semaphore) -> None:
        self._inner = inner
        self._slots = slots

    async def download(
        self,
        url: str,
        destination: Path,
        *,
        expected_length: int,
        expected_sha256: str,
        headers: Mapping[str, str] | None = None,
        mirrors: Sequence[str] = (),
    ) -> DownloadOutcome:
        async with self._slots:
            return await self._inner.download(
                url,
                destination,
                expected_length=expected_length,
                expected_sha256=expected_sha256,
                headers=headers,
                mirrors=mirrors,
            )
