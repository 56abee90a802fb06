"""The device's serving side: every model that serves, its statistics, and the local API.

Invariants: a version is loaded and warmed up before it serves; the switch to a new
version, and back on a rollback, is one reference swap within that model's
``ModelServer``, so requests to it never fail or wait because of it, and requests to the
device's other models never notice; every loaded version has its own ``StatsRecorder``,
so a new model's numbers are never mixed with the baseline of the model it replaced.
The API answers for a model from its first ``serve`` until ``stop``. The recorder's
reference profile is read from the release's check bundle beside the model in the store
(hash-verified when it was staged); without a readable one, drift is not measured.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from pathlib import Path

from protocol import ReferenceProfile, Release
from tensors import CheckBundleError, RuntimeOptions, read_reference_profile

from ..backends import load_backend
from ..stats.recorder import StatsRecorder
from ..update.names import check_bundle_name
from .http_api import InferenceApi
from .server import BackendLoader, LoadedVersion, ModelServer

__all__ = ["ServingHost"]

logger = logging.getLogger(__name__)


class ServingHost:
    def __init__(
        self,
        *,
        options: RuntimeOptions,
        window_s: float,
        host: str = "127.0.0.1",
        port: int = 8500,
        socket_path: Path | None = None,
        load_backend: BackendLoader = load_backend,
        **body_limits: int,
    ) -> None:
        """``body_limits``: ``InferenceApi``'s ``max_body_bytes``, ``max_json_body_bytes``
        and ``body_budget_bytes``."""
        self.options = options
        self.window_s = window_s
        self._load_backend = load_backend
        self.servers: dict[str, ModelServer] = {}
        self.api = InferenceApi({}, host=host, port=port, socket_path=socket_path, **body_limits)

    @property
    def load_backend(self) -> BackendLoader:
        """How this host loads models (the simulator's shares sessions among devices)."""
        return self._load_backend

    def current_of(self, name: str) -> LoadedVersion | None:
        """The version of model ``name`` that serves, if any."""
        server = self.servers.get(name)
        return server.current if server else None

    def serving(self) -> list[LoadedVersion]:
        """The serving version of every model, by model name."""
        versions = (self.current_of(name) for name in sorted(self.servers))
        return [loaded for loaded in versions if loaded is not None]

    def load(self, path: Path, release: Release) -> LoadedVersion:
        """Load and warm up ``release`` from ``path``; blocking (run it in a thread)."""
        server = self._server_for(release.model)
        recorder = StatsRecorder(
            reference=reference_profile_of(path, release),
            window_s=self.window_s,
            now_s=time.monotonic(),
        )
        return server.load(
            path, release.artifact.format, version=str(release.version), observer=recorder
        )

    def serve(self, loaded: LoadedVersion) -> LoadedVersion | None:
        """Make ``loaded`` serve; return the version it replaced (to keep as a baseline)."""
        server = self._server_for(loaded.name)
        replaced = server.swap(loaded)
        if self.servers.get(loaded.name) is not server:
            self.servers[loaded.name] = server
            self.api.add(server)
        return replaced

    def stop(self, name: str) -> LoadedVersion | None:
        """Stop serving model ``name``; return the version that served."""
        server = self.servers.pop(name, None)
        if server is None:
            return None
        self.api.remove(name)
        return server.unload()

    def _server_for(self, name: str) -> ModelServer:
        known = self.servers.get(name)
        if known is not None:
            return known
        # A model that does not serve yet gets its endpoint name once it does.
        return ModelServer(name, options=self.options, load_backend=self._load_backend)


# Bundles are content-addressed and every device of a fleet gets the same few: a process
# running thousands of agents (the simulator) keeps one parsed profile per bundle.
MAX_SHARED_PROFILES = 16
_shared_profiles: OrderedDict[str, ReferenceProfile | None] = OrderedDict()


def reference_profile_of(model_path: Path, release: Release) -> ReferenceProfile | None:
    """The reference profile in the check bundle stored beside ``model_path``, if readable."""
    sha256 = release.check_bundle.sha256
    if sha256 in _shared_profiles:
        _shared_profiles.move_to_end(sha256)
        return _shared_profiles[sha256]
    bundle = model_path.parent / check_bundle_name(sha256)
    try:
        profile = read_reference_profile(bundle)
    except (CheckBundleError, OSError) as exc:
        logger.warning("%s: no reference profile, drift is not measured: %s", release.ref(), exc)
        return None
    _shared_profiles[sha256] = profile
    while len(_shared_profiles) > MAX_SHARED_PROFILES:
        _shared_profiles.popitem(last=False)
    return profile


def recorder_of(loaded: LoadedVersion | None) -> StatsRecorder | None:
    observer = loaded.observer if loaded else None
    return observer if isinstance(observer, StatsRecorder) else None
