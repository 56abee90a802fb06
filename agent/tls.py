"""One TLS client context per process.

``ssl.create_default_context()`` reads and parses the system's CA certificates: tens of
milliseconds of CPU each time, which httpx spends on every client it builds unless it is
handed a context. Every download used to pay it (half of a simulated fleet's CPU during
a rollout). The context is only read after creation, so one can serve every client.
"""

from __future__ import annotations

import functools
import ssl

__all__ = ["default_tls_context"]


@functools.cache
def default_tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()
