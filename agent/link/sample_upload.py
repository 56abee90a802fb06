"""Uploading captured samples to the controller, and the loop that runs capture.

``upload_samples`` sends each queued sample (oldest first) with ``PUT
/api/v1/device/samples/<sha256>`` over HTTP(S), with the device's API token. The
controller answers 201 (stored) or 200 (already stored: the same bytes, e.g. a retry
whose answer was lost); either way the sample is deleted here. A refusal that sending
again cannot change (400 malformed, 403 not this device's, 409, 413 too large, 422) also
deletes it, with a warning. Anything else (no answer, 401, 429, 507 quota full, 5xx)
stops the round: the sample stays queued and is sent again at the next round.

``run_capture`` is the daemon's capture task: every ``interval_s`` it hands each serving
model's recorder its ``ModelCapture`` (or None: capture off), writes what was kept to
the queue, and, every ``upload_interval_s``, uploads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..config import AgentConfig
from ..errors import AnswerTooLargeError, TransportError
from ..stats.capture import CaptureKeeper, QueuedSample
from ..stats.recorder import StatsRecorder
from ..tls import device_tls_context
from .capped_http import capped_request

__all__ = ["SAMPLES_PATH", "UploadRound", "run_capture", "upload_samples"]

logger = logging.getLogger(__name__)

SAMPLES_PATH = "/api/v1/device/samples"
MAX_ANSWER_BYTES = 16 * 1024
TIMEOUT_S = 60.0
ACCEPTED = frozenset({200, 201})
REFUSED_FOR_GOOD = frozenset({400, 403, 409, 413, 422})
CAPTURE_INTERVAL_S = 1.0


@dataclass
class UploadRound:
    accepted: int = 0
    refused: int = 0
    left: int = 0  # still queued after the round
    stopped: str | None = None  # why the round stopped early


def _put(config: AgentConfig, sample: QueuedSample) -> tuple[int, bytes]:
    url = f"{config.controller_url.rstrip('/')}{SAMPLES_PATH}/{sample.sha256}"
    data = sample.path.read_bytes()
    return capped_request(
        "PUT",
        url,
        verify=device_tls_context(config),
        max_bytes=MAX_ANSWER_BYTES,
        timeout_s=TIMEOUT_S,
        too_large=AnswerTooLargeError,
        content=data,
        headers={
            "Authorization": f"Bearer {config.controller_token}",
            "Content-Type": "application/octet-stream",
        },
    )


def upload_samples(config: AgentConfig, keeper: CaptureKeeper) -> UploadRound:
    """Send the queue once, oldest first (blocking: run it in a thread)."""
    result = UploadRound()
    queue = keeper.queued()
    if config.controller_token is None:
        result.left, result.stopped = len(queue), "no controller_token"
        return result
    for index, sample in enumerate(queue):
        try:
            status, body = _put(config, sample)
        except FileNotFoundError:
            continue  # turned off meanwhile
        except TransportError as exc:  # AnswerTooLargeError too
            result.left, result.stopped = len(queue) - index, str(exc)
            return result
        if status in ACCEPTED:
            keeper.delete(sample)
            result.accepted += 1
        elif status in REFUSED_FOR_GOOD:
            detail = body[:200].decode("utf-8", "replace")
            logger.warning("controller refused sample %s (%d): %s", sample.sha256, status, detail)
            keeper.delete(sample)
            result.refused += 1
        else:
            result.left, result.stopped = len(queue) - index, f"controller answered {status}"
            return result
    return result


# The serving models: (name, release version or None, recorder or None).
ServingRecorders = Callable[[], Sequence[tuple[str, int | None, StatsRecorder | None]]]


async def run_capture(
    config: AgentConfig,
    keeper: CaptureKeeper,
    serving: ServingRecorders,
    *,
    interval_s: float = CAPTURE_INTERVAL_S,
    upload_interval_s: float,
) -> None:
    """The daemon's capture task (see the module's docstring); runs until cancelled."""
    last_upload_s = -float("inf")
    attached = False
    while True:
        try:
            # Capture off everywhere (the usual case, and a simulator's thousands of
            # agents): one dict read per interval, nothing else.
            if not keeper.policies and not attached:
                await asyncio.sleep(interval_s)
                continue
            attached = False
            for name, version, recorder in serving():
                if recorder is not None:
                    recorder.capture = keeper.capture_for(name, version)
                    attached |= recorder.capture is not None
            await asyncio.to_thread(keeper.flush)
            now_s = time.monotonic()
            if now_s - last_upload_s >= upload_interval_s and keeper.queued():
                last_upload_s = now_s
                result = await asyncio.to_thread(upload_samples, config, keeper)
                if result.accepted or result.refused or result.stopped:
                    logger.info(
                        "samples: %d uploaded, %d refused, %d left%s",
                        result.accepted,
                        result.refused,
                        result.left,
                        f" ({result.stopped})" if result.stopped else "",
                    )
        except Exception:
            logger.exception("sample capture step failed")
        await asyncio.sleep(interval_s)
