"""``edgefleet-agent``: the device daemon's command line.

``run`` exits 0 after a clean stop (SIGTERM/SIGINT), ``EXIT_STARTUP_FAILURE`` when the
settings, the trust root or the local state cannot be used, and ``EXIT_BROKER_AUTH``
when the broker refuses the credentials (an operator must act; retrying cannot help).
Logs are JSON lines on stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from protocol import Envelope, ProtocolError, Release, verify_initial_trust_root

from . import __version__
from .config import AgentConfig, load_config
from .errors import AgentError, BrokerAuthError

__all__ = ["EXIT_BROKER_AUTH", "EXIT_STARTUP_FAILURE", "app", "main"]

EXIT_OK = 0
EXIT_STARTUP_FAILURE = 3
EXIT_BROKER_AUTH = 4

app = typer.Typer(help="edgefleet device agent.", no_args_is_help=True)
logger = logging.getLogger("agent")


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "at": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


@app.command()
def version() -> None:
    """Print the agent version."""
    typer.echo(__version__)


@app.command("check-trust-root")
def check_trust_root(
    path: Annotated[Path, typer.Argument(help="The trust root file to install.")],
) -> None:
    """Verify that a trust root file is intact and signed by its own root keys."""
    try:
        trust_root = verify_initial_trust_root(Envelope.from_bytes(path.read_bytes()))
    except (ProtocolError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"trust root v{trust_root.version}, expires {trust_root.expires.isoformat()}: ok")


@app.command()
def run(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="agent.toml (every setting also EDGEFLEET_AGENT_*)."),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", envvar="EDGEFLEET_AGENT_LOG_LEVEL")
    ] = "info",
) -> None:
    """Run the agent until SIGTERM or SIGINT."""
    _configure_logging(log_level)
    raise typer.Exit(run_agent(config))


@app.command("serve-local")
def serve_local(
    model_file: Annotated[Path, typer.Argument(help="The .onnx or .tflite file to serve.")],
    name: Annotated[
        str | None,
        typer.Option("--name", help="The model's name in the API (default: the file's stem)."),
    ] = None,
    port: Annotated[
        int,
        typer.Option("--port", envvar="EDGEFLEET_AGENT_INFERENCE_PORT", help="Loopback port."),
    ] = 8500,
    log_level: Annotated[
        str, typer.Option("--log-level", envvar="EDGEFLEET_AGENT_LOG_LEVEL")
    ] = "info",
) -> None:
    """Serve one local model over the Open Inference Protocol until SIGTERM or SIGINT.

    No controller is needed. Exits 0 after a clean stop, 3 when the model does not load.
    """
    _configure_logging(log_level)
    from .serve_local import serve_local as serve

    raise typer.Exit(serve(model_file, name=name, port=port))


def run_agent(config_file: Path | None) -> int:
    try:
        config = load_config(config_file)
    except AgentError as exc:
        logger.error("startup failed: %s", exc)
        return EXIT_STARTUP_FAILURE
    return asyncio.run(_serve(config))


async def _serve(config: AgentConfig) -> int:
    from .daemon import AgentDaemon
    from .fetcher import FetchLimits, HttpFetcher
    from .sandbox import SandboxLimits, check_model

    limits = SandboxLimits(
        memory_bytes=config.sandbox_memory_bytes,
        cpu_s=config.sandbox_cpu_s,
        wall_s=config.sandbox_wall_s,
    )

    async def check(path: Path, release: Release, budget_ms: float | None) -> object:
        return await check_model(path, release, latency_budget_ms=budget_ms, limits=limits)

    try:
        daemon = AgentDaemon(
            config,
            fetcher=HttpFetcher(
                FetchLimits(
                    min_rate_bytes_per_s=config.download_min_rate_bytes_per_s,
                    min_deadline_s=config.download_min_deadline_s,
                    read_timeout_s=config.download_read_timeout_s,
                    max_attempts=config.download_max_attempts,
                    free_disk_margin_bytes=config.free_disk_margin_bytes,
                )
            ),
            check_model=check,
        )
    except AgentError as exc:
        logger.error("startup failed: %s", exc)
        return EXIT_STARTUP_FAILURE
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    logger.info("agent %s started as %s", __version__, config.device_id)
    try:
        await daemon.run(stop)
    except BrokerAuthError as exc:
        logger.error("the broker refused the credentials: %s", exc)
        return EXIT_BROKER_AUTH
    except AgentError as exc:
        logger.error("stopped: %s", exc)
        return EXIT_STARTUP_FAILURE
    logger.info("stopped")
    return EXIT_OK


def main() -> None:
    sys.exit(app())
