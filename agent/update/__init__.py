"""Carrying a deployment from a signed message to a committed model.

- ``trust``: untrusted bytes and a ``TrustState`` in, verified documents out (pure);
- ``trust_state``: the persisted trust facts of the device, and their file;
- ``machine``: the update state machine, its journal and crash recovery (pure table);
- ``updater``: drives one deployment through the machine;
- ``fetcher``: downloads an artifact, capped at its signed length;
- ``store``: content-addressed model directories and the ``current``/``previous`` links;
- ``sandbox`` and ``sandbox_worker``: the sandboxed test-load of a model;
- ``names``: artifact file names and digests that are safe to turn into paths.
"""
