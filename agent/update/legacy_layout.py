"""Move a data directory of the one-model agent (before ADR 0003) to the per-model layout.

The old layout kept ``store/current``, ``store/previous``, ``journal.json`` and
``staging/`` for the device's only model; the new one keeps them per model
(``store/slots/<model>/``, ``updates/<model>/``). The model's name comes from the
journal or, failing that, from the release index.

Each step is safe to repeat after a crash: links are made in the slot before the old
ones go (``ModelStore.adopt_legacy_links``), and the journal moves with one rename.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from durable import fsync_dir

from .state_files import ReleaseIndex, load_journal
from .store import ModelStore
from .updater import UpdaterPaths

__all__ = ["adopt_one_model_layout"]

logger = logging.getLogger(__name__)

LEGACY_JOURNAL = "journal.json"
LEGACY_STAGING = "staging"


def adopt_one_model_layout(data_dir: Path, releases: ReleaseIndex) -> str | None:
    """Adopt the old layout under ``data_dir``; return the model it held, if any."""
    store_root = data_dir / "store"
    journal_path = data_dir / LEGACY_JOURNAL
    journal = load_journal(journal_path)
    current = ModelStore.legacy_current_sha256(store_root)
    model = journal.release.model if journal and journal.release else None
    if model is None and current is not None:
        known = releases.get(current)
        model = known.model if known else None
    if model is None:
        if current is not None:
            logger.error(
                "store/current names %s, whose release this device does not know: "
                "left in place, not served",
                current,
            )
        return None
    ModelStore(store_root, model).adopt_legacy_links()
    if journal is not None:
        paths = UpdaterPaths.for_model(data_dir, model)
        paths.journal.parent.mkdir(parents=True, exist_ok=True)
        os.replace(journal_path, paths.journal)
        fsync_dir(paths.journal.parent)
        fsync_dir(data_dir)
    shutil.rmtree(data_dir / LEGACY_STAGING, ignore_errors=True)
    logger.warning("moved the one-model layout of %s to its own slot", model)
    return model
