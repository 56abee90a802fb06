"""``edgefleet-agent serve-local``: one local model file behind the inference API, no controller.

The same stack as the daemon's serving path: a ``ModelServer`` that loads and warms the
file, an ``InferenceApi`` on loopback, and a ``agent.stats.recorder.StatsRecorder`` as the
version's observer (imported lazily: without that module, statistics are off). Each
statistics window with requests is logged when it closes.

Three phases: startup (load, warm, listen; ``EXIT_STARTUP_FAILURE`` if any of them
fails), run (until SIGTERM or SIGINT, whose handlers only set a flag), shutdown (stop
listening, let running requests finish, exit ``EXIT_OK``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tensors import ModelFormat, RuntimeOptions

from ..errors import AgentError
from .http_api import DEFAULT_HOST, DEFAULT_PORT, InferenceApi
from .server import ModelServer, file_version

if TYPE_CHECKING:
    from ..stats.recorder import StatsRecorder

__all__ = ["EXIT_OK", "EXIT_STARTUP_FAILURE", "serve_local"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_STARTUP_FAILURE = 3
_FORMATS: dict[str, ModelFormat] = {".onnx": "onnx", ".tflite": "tflite"}


def serve_local(
    model_file: Path,
    *,
    name: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    socket_path: Path | None = None,
    options: RuntimeOptions | None = None,
) -> int:
    """Serve ``model_file`` until SIGTERM or SIGINT; return the process's exit code."""
    model_format = _FORMATS.get(model_file.suffix.lower())
    if model_format is None:
        logger.error("%s is neither .onnx nor .tflite", model_file)
        return EXIT_STARTUP_FAILURE
    server = ModelServer(name or model_file.stem, options=options)
    recorder = _stats_recorder()
    try:
        version = file_version(model_file)
        loaded = server.load(model_file, model_format, version=version, observer=recorder)
    except (AgentError, OSError) as exc:
        logger.error("the model does not load: %s", exc)
        return EXIT_STARTUP_FAILURE
    server.swap(loaded)
    api = InferenceApi(server, host=host, port=port, socket_path=socket_path)
    return asyncio.run(_serve(api, server, recorder))


async def _serve(api: InferenceApi, server: ModelServer, recorder: StatsRecorder | None) -> int:
    try:
        port = await api.start()
    except OSError as exc:
        logger.error("cannot listen on %s:%d: %s", api.host, api.port, exc)
        return EXIT_STARTUP_FAILURE
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    host = f"[{api.host}]" if ":" in api.host else api.host
    print(f"serving http://{host}:{port}/v2/models/{server.name}", flush=True)
    if api.socket_path is not None:
        print(f"serving unix:{api.socket_path} /v2/models/{server.name}", flush=True)
    windows = asyncio.create_task(_log_windows(server.name, recorder)) if recorder else None
    await stop.wait()
    logger.info("stopping")
    if windows is not None:
        windows.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await windows
    await api.stop()
    server.unload()
    return EXIT_OK


def _stats_recorder() -> StatsRecorder | None:
    """A fresh ``StatsRecorder`` without a reference profile; None without its module."""
    try:
        from ..stats.recorder import StatsRecorder
    except ImportError:
        logger.info("statistics are off: agent.stats.recorder is not installed")
        return None
    return StatsRecorder(reference=None, now_s=time.monotonic())


async def _log_windows(name: str, recorder: StatsRecorder) -> None:
    while True:
        await asyncio.sleep(recorder.window_s)
        window = recorder.roll(time.monotonic())
        if window is not None and window.requests:
            logger.info(
                "%s: %d requests, %d errors, %d non-finite, p50 %.3f ms, p95 %.3f ms in %.1f s",
                name,
                window.requests,
                window.errors,
                window.nonfinite_outputs,
                window.p50_ms,
                window.p95_ms,
                window.window_s,
            )
