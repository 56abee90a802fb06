"""The device's serving side: the model that serves, its statistics, and the local API.

Invariants: a version is loaded and warmed up before it serves; the switch to a new
version, and back on a rollback, is one reference swap, so requests never fail or wait
because of it; every loaded version has its own ``StatsRecorder``, so a new model's
numbers are never mixed with the baseline of the model it replaced. The recorder's
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
        load_backend: BackendLoader = load_backend,
    ) -> None:
        self.options = options
        self.window_s = window_s
        self._load_backend = load_backend
        self.server: ModelServer | None = None
        self.api = InferenceApi({}, host=host, port=port)

    @property
    def current(self) -> LoadedVersion | None:
        return self.server.current if self.server else None

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
        if server is not self.server:
            self.server = server
            self.api.serve_only(server)
        return server.swap(loaded)

    def _server_for(self, name: str) -> ModelServer:
        if self.server is not None and self.server.name == name:
            return self.server
        # A release of another model: it gets its own endpoint name once it serves.
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
