"""TLS client contexts, made once per process.

``ssl.create_default_context()`` reads and parses the system's CA certificates: tens of
milliseconds of CPU each time, which httpx spends on every client it builds unless it is
handed a context. Every download used to pay it (half of a simulated fleet's CPU during
a rollout). A context is only read after creation, so one can serve every client.

An enrolled device with a CA (``AgentConfig.tls_ca_file``) trusts that CA alone, not the
system's: the controller and the broker must show a certificate it issued, and the
device presents its own client certificate to the broker (mTLS).
"""

from __future__ import annotations

import functools
import ssl
from pathlib import Path

from .config import AgentConfig
from .errors import ConfigurationError

__all__ = ["default_tls_context", "device_tls_context", "pinned_ca_context"]


@functools.cache
def default_tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


@functools.cache
def pinned_ca_context(
    ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A context that trusts only ``ca_file`` and, given them, presents the client
    certificate ``cert_file`` with its key."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file))
        if cert_file is not None and key_file is not None:
            context.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load the device's TLS files: {exc}") from exc
    return context


def device_tls_context(config: AgentConfig) -> ssl.SSLContext:
    """The context for the broker and the controller: the pinned CA and the device's
    certificate when enrollment gave them, else the system's CAs."""
    if config.tls_ca_file is None:
        return default_tls_context()
    return pinned_ca_context(config.tls_ca_file, config.tls_cert_file, config.tls_key_file)
