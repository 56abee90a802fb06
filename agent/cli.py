"""``edgefleet-agent``: the device daemon's command line.

``run`` exits 0 after a clean stop (SIGTERM/SIGINT), ``EXIT_STARTUP_FAILURE`` when the
settings, the trust root or the local state cannot be used, and ``EXIT_BROKER_AUTH``
when the broker refuses the credentials (an operator must act; retrying cannot help).
``enroll`` exits 0 when enrolled, ``EXIT_ENROLL_REFUSED`` when the controller refused it
(or answered something unusable), 2 for a usage error (an existing ``agent.toml``
without ``--force`` included) and ``EXIT_ENROLL_UNREACHABLE`` when the controller cannot
be reached. Logs are JSON lines on stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from . import __version__

if TYPE_CHECKING:
    from protocol import Release

    from .config import AgentConfig

# Each command imports what it needs when it runs: ``serve-local`` on a small device should
# not carry the MQTT link, the enrollment client and the signature checks in memory.

__all__ = [
    "EXIT_BROKER_AUTH",
    "EXIT_ENROLL_REFUSED",
    "EXIT_ENROLL_UNREACHABLE",
    "EXIT_STARTUP_FAILURE",
    "EXIT_USAGE",
    "app",
    "main",
]

EXIT_OK = 0
EXIT_STARTUP_FAILURE = 3
EXIT_BROKER_AUTH = 4
EXIT_ENROLL_REFUSED = 1
EXIT_USAGE = 2
EXIT_ENROLL_UNREACHABLE = 3

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
    from protocol import Envelope, ProtocolError, verify_initial_trust_root

    try:
        trust_root = verify_initial_trust_root(Envelope.from_bytes(path.read_bytes()))
    except (ProtocolError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"trust root v{trust_root.version}, expires {trust_root.expires.isoformat()}: ok")


@app.command("enroll")
def enroll(
    controller: Annotated[
        str, typer.Option("--controller", help="The controller's URL, e.g. https://fleet:8080.")
    ],
    token: Annotated[
        str,
        typer.Option(
            "--token",
            envvar="EDGEFLEET_ENROLLMENT_TOKEN",
            help="The one-time enrollment token (edgefleet devices enroll).",
        ),
    ],
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Where agent.toml, the trust root and state go.")
    ],
    device_id: Annotated[
        str | None,
        typer.Option("--device-id", help="Propose a device id (if the token names none)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing agent.toml.")] = False,
    trust_root_sha256: Annotated[
        str | None,
        typer.Option(
            "--trust-root-sha256",
            envvar="EDGEFLEET_TRUST_ROOT_SHA256",
            help="Refuse any trust root but the one with this SHA-256 (printed with the token).",
        ),
    ] = None,
    trust_root: Annotated[
        Path | None,
        typer.Option(
            "--trust-root",
            help="A provisioned trust root: accept only it or its next version.",
        ),
    ] = None,
    ca_sha256: Annotated[
        str | None,
        typer.Option(
            "--ca-sha256",
            envvar="EDGEFLEET_CA_SHA256",
            help="The controller's CA (SHA-256 of its certificate, printed with the token): "
            "trust only it for HTTPS and MQTT over TLS.",
        ),
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option("--ca-file", help="The controller's CA certificate (PEM), provisioned."),
    ] = None,
) -> None:
    """Trade a one-time token for this device's identity; write agent.toml, the trust root
    and, from a controller with a CA, the device's key and certificate."""
    if trust_root_sha256 is not None and not _is_sha256(trust_root_sha256):
        raise typer.BadParameter("64 hexadecimal digits", param_hint="--trust-root-sha256")
    if ca_sha256 is not None and not _is_sha256(ca_sha256.replace(":", "")):
        raise typer.BadParameter("64 hexadecimal digits", param_hint="--ca-sha256")
    if ca_sha256 is not None and ca_file is not None:
        raise typer.BadParameter("give --ca-sha256 or --ca-file, not both")
    raise typer.Exit(
        enroll_device(
            controller,
            token,
            data_dir,
            device_id=device_id,
            force=force,
            trust_root_sha256=trust_root_sha256,
            trust_root=trust_root,
            ca_sha256=ca_sha256,
            ca_file=ca_file,
        )
    )


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def enroll_device(
    controller: str,
    token: str,
    data_dir: Path,
    *,
    device_id: str | None,
    force: bool,
    trust_root_sha256: str | None = None,
    trust_root: Path | None = None,
    ca_sha256: str | None = None,
    ca_file: Path | None = None,
) -> int:
    from protocol import Envelope, ProtocolError

    from .errors import ConfigurationError, LocalStateError, RefusalError, TransportError
    from .link import enroll as enrollment

    provisioned = None
    if trust_root is not None:
        try:
            provisioned = Envelope.from_bytes(trust_root.read_bytes())
        except (OSError, ProtocolError) as exc:
            typer.echo(f"error: cannot read the provisioned trust root: {exc}", err=True)
            return EXIT_USAGE
    pin = enrollment.TrustRootPin(sha256=trust_root_sha256, provisioned=provisioned)
    try:
        ca_pin = None
        if ca_file is not None:
            ca_pin = enrollment.CaPin.from_file(ca_file)
        elif ca_sha256 is not None:
            ca_pin = enrollment.CaPin(sha256=ca_sha256)
        device, config_path = enrollment.enroll(
            controller,
            token,
            data_dir,
            device_id=device_id,
            force=force,
            pin=pin,
            ca_pin=ca_pin,
        )
    except enrollment.AgentConfigExistsError as exc:
        typer.echo(f"error: {exc}", err=True)
        return EXIT_USAGE
    except TransportError as exc:
        typer.echo(f"error: {exc}", err=True)
        return EXIT_ENROLL_UNREACHABLE
    except (enrollment.EnrollmentRefusedError, RefusalError, LocalStateError) as exc:
        typer.echo(f"error: {exc}", err=True)
        return EXIT_ENROLL_REFUSED
    except ConfigurationError as exc:  # an unreadable --ca-file
        typer.echo(f"error: {exc}", err=True)
        return EXIT_USAGE
    labels = ",".join(f"{k}={v}" for k, v in sorted(device.labels.items())) or "none"
    typer.echo(f"enrolled as {device.device_id} (labels: {labels})")
    typer.echo(f"wrote {config_path} and {data_dir / enrollment.TRUST_ROOT_FILE}")
    if enrollment.TLS_CERT_FILE in device.tls_files:
        typer.echo(f"wrote this device's key and certificate to {data_dir / 'tls'}")
    typer.echo(f"start the agent with: edgefleet-agent run --config {config_path}")
    return EXIT_OK


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
    socket: Annotated[
        Path | None,
        typer.Option("--socket", help="Also serve on this Unix domain socket (mode 0660)."),
    ] = None,
    threads: Annotated[
        str,
        typer.Option(
            "--threads",
            envvar="EDGEFLEET_AGENT_INFERENCE_THREADS",
            help='Threads per inference: a number, or "auto" (the physical cores).',
        ),
    ] = "auto",
    log_level: Annotated[
        str, typer.Option("--log-level", envvar="EDGEFLEET_AGENT_LOG_LEVEL")
    ] = "info",
) -> None:
    """Serve one local model over the Open Inference Protocol until SIGTERM or SIGINT.

    No controller is needed. Exits 0 after a clean stop, 3 when the model does not load.
    """
    _configure_logging(log_level)
    from .backends import runtime_options
    from .serving.serve_local import serve_local as serve

    if threads != "auto" and not (threads.isdigit() and int(threads) >= 1):
        raise typer.BadParameter('a number of threads >= 1, or "auto"', param_hint="--threads")
    options = runtime_options(
        providers=("CPUExecutionProvider",),
        intra_op_threads="auto" if threads == "auto" else int(threads),
    )
    raise typer.Exit(serve(model_file, name=name, port=port, socket_path=socket, options=options))


def run_agent(config_file: Path | None) -> int:
    from .config import load_config
    from .errors import AgentError

    try:
        config = load_config(config_file)
    except AgentError as exc:
        logger.error("startup failed: %s", exc)
        return EXIT_STARTUP_FAILURE
    return asyncio.run(_serve(config))


async def _serve(config: AgentConfig) -> int:
    from .daemon import AgentDaemon
    from .errors import AgentError, BrokerAuthError
    from .tls import device_tls_context
    from .update.fetcher import FetchLimits, HttpFetcher
    from .update.sandbox import SandboxLimits, check_model

    limits = SandboxLimits(
        memory_bytes=config.sandbox_memory_bytes,
        cpu_s=config.sandbox_cpu_s,
        wall_s=config.sandbox_wall_s,
    )

    async def check(path: Path, bundle: Path, release: Release, budget_ms: float | None) -> object:
        return await check_model(
            path, release, check_bundle=bundle, latency_budget_ms=budget_ms, limits=limits
        )

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
                ),
                tls_context=device_tls_context(config),
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
