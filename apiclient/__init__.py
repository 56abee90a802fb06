"""The controller's HTTP API as its clients reach it: the operator CLI and the simulator.

One package for both (the simulator reaches the controller only over HTTP and MQTT, so
neither imports the other; ARCHITECTURE.md §2): the base URL and bearer token, the
timeouts, the translation of every transport failure and error answer into one
``ApiError`` carrying the server's reason, and the calls both make.

- ``ControllerClient`` is synchronous, for the operator's command line and scripts;
- ``AsyncControllerClient`` runs in an event loop beside thousands of simulated agents,
  and sends a GET again when the connection fails (a GET is safe to repeat).

This namespace is the public API; the submodules are its implementation.
"""

from ._async import AsyncControllerClient
from ._errors import ApiError
from ._sync import DEFAULT_URL, ControllerClient

__all__ = ["DEFAULT_URL", "ApiError", "AsyncControllerClient", "ControllerClient"]
